package sni_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/egressd/egressd/sni"
)

// The bytes arrive in pieces; ParseRecords says ErrNeedMore until the whole
// hello is there.
func ExampleParseRecords() {
	stream, err := os.ReadFile("testdata/curl-7.88.1-split-2records.bin")
	if err != nil {
		panic(err)
	}
	var h sni.Hello
	for _, have := range []int{100, 300, len(stream)} {
		n, err := sni.ParseRecords(stream[:have], &h)
		if errors.Is(err, sni.ErrNeedMore) {
			fmt.Println(have, "bytes: need more")
			continue
		}
		if err != nil {
			fmt.Println("reject:", err)
			return
		}
		_, ja3 := h.JA3()
		fmt.Println(n, "bytes:", h.ServerName, h.ALPN)
		fmt.Println("JA3", ja3)
		fmt.Println("JA4", h.JA4(false))
	}
	// Output:
	// 100 bytes: need more
	// 300 bytes: need more
	// 522 bytes: curl.egress.test [h2 http/1.1]
	// JA3 0149f47eabf9a20d0893e2a44e5a6323
	// JA4 t13d3112h2_e8f1e7e78f70_b26ce05bbdd6
}

func ExampleParseRecords_notTLS() {
	var h sni.Hello
	_, err := sni.ParseRecords([]byte("GET / HTTP/1.1\r\n"), &h)
	fmt.Println(errors.Is(err, sni.ErrNotTLS))
	_, err = sni.ParseRecords([]byte{0x16, 0x03, 0x01, 0x00, 0x00}, &h)
	fmt.Println(err)
	// Output:
	// true
	// sni: malformed client hello: zero-length handshake record
}
