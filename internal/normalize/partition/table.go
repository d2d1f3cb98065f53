package partition

import (
	"bytes"
	"errors"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
)

// maxGPTEntries bounds what a header may make us read; sgdisk's default is
// 16 KiB.
const maxGPTEntries = 1 << 20

// classify decides from sectors 0 and 1 which table the image has,
// refusing the combinations tools disagree about.
func classify(s0, s1 []byte) (string, error) {
	magic := s0[gptspec.MBRBootSigOffset] == 0x55 && s0[gptspec.MBRBootSigOffset+1] == 0xAA
	hasGPT := string(s1[:8]) == gptspec.GPTSignature
	var protective, claims, badBoot bool
	for i := 0; i < 4; i++ {
		e := mbrEntry(s0, i)
		if bytes.Equal(e, make([]byte, gptspec.MBREntrySize)) {
			continue
		}
		claims = true
		protective = protective || e[gptspec.MBREntryType] == gptspec.MBRTypeGPTProtector
		status := e[gptspec.MBREntryStatus]
		badBoot = badBoot || (status != 0 && status != 0x80)
	}
	switch {
	case hasGPT && !magic:
		return "", errors.New("LBA 1 holds a GPT header but sector 0 lacks the 0x55AA boot signature: the protective MBR is missing or corrupt")
	case hasGPT && !protective:
		return "", errors.New("LBA 1 holds a GPT header but the MBR has no 0xEE protective entry: tools disagree whether this is a GPT or an MBR disk")
	case hasGPT:
		return "gpt", nil
	case magic && protective:
		return "", errors.New("the MBR has a 0xEE GPT-protective entry but LBA 1 holds no GPT header: the primary GPT is corrupt (or the sectors are not 512 bytes)")
	case !magic && claims && !badBoot:
		return "", errors.New("sector 0 has MBR partition entries but lacks the 0x55AA boot signature: the MBR is corrupt")
	case !magic, isBootRecord(s0), badBoot:
		// As libblkid: a boot flag other than 0x00/0x80 is no DOS table.
		return "none", nil
	}
	return "mbr", nil
}

// mbrEntry returns primary entry i (0..3) of sector 0.
func mbrEntry(s0 []byte, i int) []byte {
	at := gptspec.MBREntriesOffset + gptspec.MBREntrySize*i
	return s0[at : at+gptspec.MBREntrySize]
}

// isBootRecord reports a FAT, exFAT or NTFS boot sector, which carries
// 0x55AA too: the image is a bare filesystem, not a partitioned disk.
func isBootRecord(s0 []byte) bool {
	if s0[0] != 0xEB && s0[0] != 0xE9 {
		return false
	}
	oem := string(s0[3:11])
	return oem == "NTFS    " || oem == "EXFAT   " ||
		string(s0[54:57]) == "FAT" || string(s0[82:87]) == "FAT32"
}
