package testmodule

// WithCustomSection returns module with a custom section appended: a
// module of another digest (and size) that behaves the same.
func WithCustomSection(module []byte, name string, payload []byte) []byte {
	body := append([]byte{byte(len(name))}, name...)
	body = append(body, payload...)
	out := append(append([]byte{}, module...), 0) // section id 0: custom
	out = append(out, uleb128(len(body))...)
	return append(out, body...)
}

func uleb128(n int) []byte {
	var out []byte
	for {
		b := byte(n & 0x7f)
		n >>= 7
		if n == 0 {
			return append(out, b)
		}
		out = append(out, b|0x80)
	}
}
