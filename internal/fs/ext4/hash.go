package ext4

import (
	"encoding/binary"
	"math/bits"
)

// dirHash is ext4's half_md4 directory hash, "signed" variant (the bytes
// of the name are sign-extended, as on x86 where mke2fs sets
// EXT2_FLAGS_SIGNED_HASH). It returns the major hash with the low bit
// cleared, which the htree reserves as the collision-continuation flag.
func dirHash(seed *[4]uint32, name []byte) uint32 {
	buf := [4]uint32{0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476}
	if seed[0]|seed[1]|seed[2]|seed[3] != 0 {
		buf = *seed
	}
	var in [8]uint32
	p := name
	for n := len(p); n > 0; n -= 32 {
		hashBufSigned(p, &in)
		halfMD4(&buf, &in)
		if len(p) > 32 {
			p = p[32:]
		}
	}
	h := buf[1] &^ 1
	if h == 0x7fffffff<<1 { // reserved as the end-of-directory marker
		h = (0x7fffffff - 1) << 1
	}
	return h
}

// hashBufSigned packs up to 32 bytes of msg into 8 words, padding with a
// length-derived pattern (str2hashbuf_signed).
func hashBufSigned(msg []byte, out *[8]uint32) {
	l := uint32(len(msg))
	pad := l | l<<8
	pad |= pad << 16
	val := pad
	n := min(len(msg), 32)
	k := 0
	for i := 0; i < n; i++ {
		val = uint32(int32(int8(msg[i]))) + val<<8
		if i%4 == 3 {
			out[k] = val
			k++
			val = pad
		}
	}
	if k < 8 {
		out[k] = val
		k++
	}
	for ; k < 8; k++ {
		out[k] = pad
	}
}

func halfMD4(buf *[4]uint32, in *[8]uint32) {
	const k2, k3 = 0x5A827999, 0x6ED9EBA1
	f := func(x, y, z uint32) uint32 { return z ^ (x & (y ^ z)) }
	g := func(x, y, z uint32) uint32 { return (x & y) + ((x ^ y) & z) }
	h := func(x, y, z uint32) uint32 { return x ^ y ^ z }
	a, b, c, d := buf[0], buf[1], buf[2], buf[3]
	r := func(fn func(x, y, z uint32) uint32, a, b, c, d, x uint32, s int) uint32 {
		return bits.RotateLeft32(a+fn(b, c, d)+x, s)
	}
	a = r(f, a, b, c, d, in[0], 3)
	d = r(f, d, a, b, c, in[1], 7)
	c = r(f, c, d, a, b, in[2], 11)
	b = r(f, b, c, d, a, in[3], 19)
	a = r(f, a, b, c, d, in[4], 3)
	d = r(f, d, a, b, c, in[5], 7)
	c = r(f, c, d, a, b, in[6], 11)
	b = r(f, b, c, d, a, in[7], 19)

	a = r(g, a, b, c, d, in[1]+k2, 3)
	d = r(g, d, a, b, c, in[3]+k2, 5)
	c = r(g, c, d, a, b, in[5]+k2, 9)
	b = r(g, b, c, d, a, in[7]+k2, 13)
	a = r(g, a, b, c, d, in[0]+k2, 3)
	d = r(g, d, a, b, c, in[2]+k2, 5)
	c = r(g, c, d, a, b, in[4]+k2, 9)
	b = r(g, b, c, d, a, in[6]+k2, 13)

	a = r(h, a, b, c, d, in[3]+k3, 3)
	d = r(h, d, a, b, c, in[7]+k3, 9)
	c = r(h, c, d, a, b, in[2]+k3, 11)
	b = r(h, b, c, d, a, in[6]+k3, 15)
	a = r(h, a, b, c, d, in[1]+k3, 3)
	d = r(h, d, a, b, c, in[5]+k3, 9)
	c = r(h, c, d, a, b, in[0]+k3, 11)
	b = r(h, b, c, d, a, in[4]+k3, 15)

	buf[0] += a
	buf[1] += b
	buf[2] += c
	buf[3] += d
}

func hashSeedWords(s [16]byte) [4]uint32 {
	var w [4]uint32
	for i := range w {
		w[i] = binary.LittleEndian.Uint32(s[4*i:])
	}
	return w
}
