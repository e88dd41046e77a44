// Package testweb drives examples/webserver the way the tests load it:
// many clients at once, each downloading large bodies and uploading one
// to be echoed, every byte checked.
package testweb

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// Load has clients clients each GET base/bytes/size downloads times and
// POST size/4 bytes to base/echo, on keep-alive connections, and returns
// every mismatch or failure.
func Load(base string, clients, downloads, size int) error {
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- exercise(client, base, c, downloads, size)
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func exercise(client *http.Client, base string, c, downloads, size int) error {
	for k := 0; k < downloads; k++ {
		b, err := call(client, http.MethodGet, fmt.Sprintf("%s/bytes/%d", base, size), nil)
		// The server repeats the alphabet in 64 KiB chunks.
		if err != nil || len(b) != size || (size > 0 && b[size-1] != byte('a'+(size-1)%(64<<10)%26)) {
			return fmt.Errorf("client %d: GET /bytes/%d: %d bytes, %v", c, size, len(b), err)
		}
	}
	upload := bytes.Repeat([]byte{byte('A' + c%26)}, size/4)
	back, err := call(client, http.MethodPost, base+"/echo", upload)
	if err != nil || !bytes.Equal(back, upload) {
		return fmt.Errorf("client %d: POST /echo: %d bytes back of %d, %v", c, len(back), len(upload), err)
	}
	return nil
}

func call(client *http.Client, method, url string, body []byte) ([]byte, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", resp.Status)
	}
	return b, err
}
