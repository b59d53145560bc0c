package progress

import (
	"fmt"
	"strconv"
	"time"
)

// Count formats n with thousands separators: 1234567 -> "1,234,567".
func Count(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := false
	if n < 0 {
		neg = true
		s = s[1:]
	}
	if len(s) <= 3 {
		if neg {
			return "-" + s
		}
		return s
	}
	out := make([]byte, 0, len(s)+len(s)/3+1)
	if neg {
		out = append(out, '-')
	}
	first := len(s) % 3
	if first == 0 {
		first = 3
	}
	out = append(out, s[:first]...)
	for i := first; i < len(s); i += 3 {
		out = append(out, ',')
		out = append(out, s[i:i+3]...)
	}
	return string(out)
}

var shortSuffixes = []string{"", "k", "M", "G", "T", "P", "E"}

// Short formats n with three significant digits and an SI suffix:
// 1234567 -> "1.23M", 45100 -> "45.1k", 950 -> "950". Whole numbers below
// 1000 are printed without decimals; fractional ones keep three digits
// (12.5 -> "12.5", 0.5 -> "0.50").
func Short(n float64) string {
	if n != n { // NaN
		return "-"
	}
	if n < 0 {
		return "-" + Short(-n)
	}
	if n < 999.5 && n == float64(int64(n)) {
		return strconv.FormatInt(int64(n), 10)
	}
	v := n
	for i, suf := range shortSuffixes {
		last := i == len(shortSuffixes)-1
		switch {
		case v < 9.995:
			return fmt.Sprintf("%.2f%s", v, suf)
		case v < 99.95:
			return fmt.Sprintf("%.1f%s", v, suf)
		case v < 999.5 || last:
			return fmt.Sprintf("%.0f%s", v, suf)
		}
		v /= 1000
	}
	return "-" // unreachable
}

var byteUnits = []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}

// Bytes formats n as a binary size: 1536 -> "1.5 KiB", 3221225472 ->
// "3.0 GiB", 512 -> "512 B". Values of 100 and more in a unit drop the
// decimal ("210 MiB").
func Bytes(n int64) string {
	if n < 0 {
		if n == -n { // math.MinInt64
			return "-8.0 EiB"
		}
		return "-" + Bytes(-n)
	}
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	v := float64(n)
	for i, unit := range byteUnits {
		last := i == len(byteUnits)-1
		if i > 0 {
			switch {
			case v < 99.95:
				return fmt.Sprintf("%.1f %s", v, unit)
			case v < 1023.5 || last:
				return fmt.Sprintf("%.0f %s", v, unit)
			}
		}
		v /= 1024
	}
	return "-" // unreachable
}

// Duration formats d compactly: "1.2s" below a minute, "3m04s" below an
// hour, "2h05m" above.
func Duration(d time.Duration) string {
	if d < 0 {
		return "-" + Duration(-d)
	}
	if r := d.Round(100 * time.Millisecond); r < time.Minute {
		return fmt.Sprintf("%.1fs", r.Seconds())
	}
	if r := d.Round(time.Second); r < time.Hour {
		s := int64(r / time.Second)
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	m := int64(d.Round(time.Minute) / time.Minute)
	return fmt.Sprintf("%dh%02dm", m/60, m%60)
}

// clock formats d as a wall-clock style elapsed time: "0:42", "12:05",
// "1:02:03".
func clock(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	if s < 3600 {
		return fmt.Sprintf("%d:%02d", s/60, s%60)
	}
	return fmt.Sprintf("%d:%02d:%02d", s/3600, (s/60)%60, s%60)
}
