package extsort

import "slices"

// radixCutoff is the bucket size below which sortEntries switches to a
// comparison sort.
const radixCutoff = 96

// keyByte returns byte i (0..15) of the entry's 16-byte prefix key.
func keyByte(e *entry, i int) byte {
	if i < 8 {
		return byte(e.k0 >> (56 - 8*uint(i)))
	}
	return byte(e.k1 >> (56 - 8*uint(i-8)))
}

// sortEntries sorts ents exactly as bytes.Compare orders their records. It is
// an in-place most-significant-byte radix sort (American flag sort) on the
// 16-byte prefix keys; buckets smaller than radixCutoff, and buckets whose
// keys are entirely equal, are finished with slices.SortFunc and
// compareEntries, which falls back to the full records on equal keys.
//
// Records that share long prefixes (paths: "daily.12/host00/..." in every
// record of a snapshot) would leave large buckets to the comparison sort
// once the 16 key bytes are used up: such a bucket, whose records all share
// those 16 bytes, is keyed again from the records' next 16 bytes and radix
// sorted on. Keys change only within such a bucket, where every record had
// the same key, so comparisons inside it stay exact; nothing reads the keys
// after the sort.
func sortEntries(ents []entry, arena []byte) {
	cmpFn := func(x, y entry) int { return compareEntries(arena, &x, &y) }
	radixSort(ents, 0, 0, arena, cmpFn)
}

// rekey sets each entry's key to bytes base..base+16 of its record
// (zero-padded).
func rekey(ents []entry, arena []byte, base int) {
	for i := range ents {
		e := &ents[i]
		rec := arena[e.off : e.off+e.n]
		if len(rec) > base {
			e.k0, e.k1 = prefixKey(rec[base:])
		} else {
			e.k0, e.k1 = 0, 0
		}
	}
}

func radixSort(ents []entry, byteIdx, base int, arena []byte, cmpFn func(x, y entry) int) {
	for {
		if byteIdx >= 16 && len(ents) >= radixCutoff && base < 1<<16 {
			// Every record here has the same bytes up to base+16.
			base += 16
			rekey(ents, arena, base)
			byteIdx = 0
		}
		if len(ents) < radixCutoff || byteIdx >= 16 {
			slices.SortFunc(ents, cmpFn)
			return
		}
		var count [256]int
		for i := range ents {
			count[keyByte(&ents[i], byteIdx)]++
		}
		if count[keyByte(&ents[0], byteIdx)] == len(ents) {
			// All keys share this byte: go on with the next one.
			byteIdx++
			continue
		}
		var next, end [256]int
		pos := 0
		for b, c := range count {
			next[b] = pos
			pos += c
			end[b] = pos
		}
		// Permute in place: swap each misplaced entry into the next free
		// slot of its bucket. Every swap puts one entry in its final
		// bucket, so this ends after at most len(ents) swaps.
		for b := 0; b < 256; b++ {
			for next[b] < end[b] {
				i := next[b]
				d := int(keyByte(&ents[i], byteIdx))
				if d == b {
					next[b]++
					continue
				}
				j := next[d]
				next[d]++
				ents[i], ents[j] = ents[j], ents[i]
			}
		}
		start := 0
		for _, c := range count {
			if c > 1 {
				radixSort(ents[start:start+c], byteIdx+1, base, arena, cmpFn)
			}
			start += c
		}
		return
	}
}
