package disk

// BootEnd exports bootEnd to the external tests, which compare Plan with
// make-disk-image's parted calls for the same boot size.
var BootEnd = bootEnd
