package image_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	. "github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/internal/testregistry"
)

// streamLayer writes a gzip layer out of pieces, each a gzip member of its
// own (gzip readers read concatenated members as one stream), so that a
// piece repeated thousands of times is compressed once. It hashes the
// uncompressed stream for the diff ID as it goes; nothing uncompressed is
// kept.
type streamLayer struct {
	t       testing.TB
	out     bytes.Buffer
	diff    hash.Hash
	members map[string][]byte
	size    int64
}

func newStreamLayer(t testing.TB) *streamLayer {
	return &streamLayer{t: t, diff: sha256.New(), members: map[string][]byte{}}
}

// add appends b uncompressed; with a key, its compressed member is reused
// for every piece of that key.
func (l *streamLayer) add(key string, b []byte) {
	m, ok := l.members[key]
	if !ok || key == "" {
		// A piece used once is small: compressing it hard buys nothing.
		level := gzip.BestSpeed
		if key != "" {
			level = gzip.BestCompression
		}
		var buf bytes.Buffer
		gz, _ := gzip.NewWriterLevel(&buf, level)
		gz.Write(b)
		if err := gz.Close(); err != nil {
			l.t.Fatal(err)
		}
		m = buf.Bytes()
		if key != "" {
			l.members[key] = m
		}
	}
	l.out.Write(m)
	l.diff.Write(b)
	l.size += int64(len(b))
}

// header appends a tar header (and, for a file, data; nil data with a
// size means size zero bytes, added as one reusable piece).
func (l *streamLayer) entry(hdr tar.Header, data []byte) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&hdr); err != nil {
		l.t.Fatal(err)
	}
	if data != nil {
		tw.Write(data)
	}
	tw.Flush()
	l.add("", buf.Bytes())
}

func (l *streamLayer) end() crafted {
	l.add("", make([]byte, 1024)) // the tar's two zero blocks
	return crafted{blob: l.out.Bytes(), diffID: digest.NewDigestFromBytes(digest.SHA256, l.diff.Sum(nil))}
}

// heapPeak runs f and returns how far the Go heap's live objects grew
// above where they were, at the highest of samples taken throughout.
func heapPeak(f func()) int64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() int64 {
		metrics.Read(sample)
		return int64(sample[0].Value.Uint64())
	}
	runtime.GC()
	base := read()
	peak := base
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			peak = max(peak, read())
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-stopped
	return max(peak, read()) - base
}

// A layer of thousands of entries whose names are a megabyte each (PAX
// headers allow that; gzip makes each a kilobyte): kept in an index, they
// take the daemon's heap gigabytes. Names longer than PATH_MAX are
// refused, and nothing is kept per entry, so the heap grows no more than
// it does pulling a small image.
func TestPullHeaderNameBomb(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	const entries, nameLen = 2048, 1<<20 - 4096
	long := strings.Repeat("n", nameLen)
	l := newStreamLayer(t)
	l.entry(tar.Header{Name: "app.wasm", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(emptyModule))}, emptyModule)
	// Each entry is a PAX header naming the file "%06d/nnn...", then the
	// file's own header. All but the name's first bytes are alike, and
	// compressed once.
	body := len(" path=000000/" + long + "\n")
	recLen := body + len(strconv.Itoa(body))
	recLen = body + len(strconv.Itoa(recLen))
	pax := ustarBlock(t, "PaxHeaders/entry", tar.TypeXHeader, int64(recLen))
	longBytes := []byte(long)
	tail := append([]byte("\n"), make([]byte, (512-recLen%512)%512)...)
	tail = append(tail, ustarBlock(t, "entry", tar.TypeReg, 0)...)
	for i := range entries {
		l.add("", fmt.Appendf(slices.Clone(pax), "%d path=%06d/", recLen, i))
		l.add("long", longBytes)
		l.add("tail", tail)
	}
	bomb := l.end()
	t.Logf("header bomb: %d entries, %d bytes uncompressed, %d compressed", entries, l.size, len(bomb.blob))
	push(t, reg+"/bomb/names:1", compatOf("/app.wasm", bomb))
	push(t, reg+"/ok/small:1", compatOf("/app.wasm", gzLayer(t, file("app.wasm", emptyModule), dir("etc"), file("etc/motd", []byte("hi")))))

	s := newService(t, t.TempDir(), Options{})
	var err error
	small := heapPeak(func() { _, err = s.Pull(ctx, reg+"/ok/small:1", nil) })
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	grown := heapPeak(func() { _, err = s.Pull(ctx, reg+"/bomb/names:1", nil) })
	t.Logf("heap grew %d KiB pulling a small image, %d KiB pulling the bomb (refused in %v: %v)", small>>10, grown>>10, time.Since(start), err)
	if err != nil {
		wantErr(t, err, errdefs.ErrInvalidArgument, "longer than 4096")
	}
	// The bomb's names alone are 2 GiB; a megabyte or two of them at a
	// time is what reading one header takes.
	if limit := small + 64<<20; grown > limit {
		t.Fatalf("the heap grew %d MiB pulling the bomb, over %d MiB", grown>>20, limit>>20)
	}
	leftovers(t, s)
	if _, err := s.Pull(ctx, reg+"/ok/small:1", nil); err != nil {
		t.Fatalf("pull after the bomb: %v", err)
	}
}

// ustarBlock is a tar header block, written by hand: Go's tar writer makes
// no PAX header of its own and is slow with megabyte names.
func ustarBlock(t testing.TB, name string, typeflag byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], "00000000000\x00")
	b[156] = typeflag
	copy(b[257:265], "ustar\x0000")
	copy(b[148:156], "        ")
	var sum int
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// zeroBomb is a layer holding the module, then files of zeros (or, with
// trailing, zeros past the tar's end), of total bytes.
func zeroBomb(t testing.TB, total int64, trailing bool) crafted {
	const chunk = 16 << 20
	zeros := make([]byte, chunk)
	l := newStreamLayer(t)
	l.entry(tar.Header{Name: "app.wasm", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(emptyModule))}, emptyModule)
	if trailing {
		l.add("", make([]byte, 1024))
	}
	for i := range total / chunk {
		if !trailing {
			l.entry(tar.Header{Name: fmt.Sprintf("zeros/%05d", i), Typeflag: tar.TypeReg, Mode: 0o644, Size: chunk}, nil)
		}
		l.add("zeros", zeros)
	}
	if trailing {
		return crafted{blob: l.out.Bytes(), diffID: digest.NewDigestFromBytes(digest.SHA256, l.diff.Sum(nil))}
	}
	return l.end()
}

// A small gzip layer that unpacks to gigabytes is refused at
// image.max_unpacked_size, whether its bytes are files or follow the tar's
// end, and leaves nothing behind.
func TestPullGzipBombRefused(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	push(t, reg+"/bomb/files:1", compatOf("/app.wasm", zeroBomb(t, 2<<30, false)))
	push(t, reg+"/bomb/trailing:1", compatOf("/app.wasm", zeroBomb(t, 256<<20, true)))
	push(t, reg+"/ok/small:1", compatOf("/app.wasm", gzLayer(t, file("app.wasm", emptyModule))))
	s := newService(t, t.TempDir(), Options{MaxUnpackedSize: 64 << 20})
	for _, name := range []string{"files", "trailing"} {
		start := time.Now()
		_, err := s.Pull(ctx, reg+"/bomb/"+name+":1", nil)
		t.Logf("%s: refused in %v: %v", name, time.Since(start), err)
		wantErr(t, err, errdefs.ErrInvalidArgument, "more than 67108864 bytes, the image.max_unpacked_size limit")
		if entries, _ := os.ReadDir(s.FSDir()); len(entries) != 0 {
			t.Fatalf("image-fs holds %v after the refusal", entries)
		}
	}
	if imgs, _ := s.List(); len(imgs) != 0 {
		t.Fatalf("refused bombs left images: %v", imgs)
	}
	if _, err := s.Pull(ctx, reg+"/ok/small:1", nil); err != nil {
		t.Fatalf("pull after the bombs: %v", err)
	}
}

// With the limit out of the way, a gzip bomb is stopped by the pull's
// deadline: the pull ends with DeadlineExceeded long before the bomb could
// have been decompressed, as measured in this run.
func TestPullGzipBombHonoursDeadline(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	const size = 4 << 30
	bomb := zeroBomb(t, size, false)
	push(t, reg+"/bomb/files:1", compatOf("/app.wasm", bomb))

	// The least the bomb costs: decompressing it, here extrapolated from
	// its first eighth (members are alike), with nothing written.
	start := time.Now()
	gz, err := gzip.NewReader(bytes.NewReader(bomb.blob))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, gz, size/8); err != nil {
		t.Fatal(err)
	}
	full := 8 * time.Since(start)

	// On a busy machine the fetch can outlast a short timeout, which then
	// says nothing of unpacking: try a longer one, as long as the bound
	// stays well short of decompressing the whole bomb.
	for timeout := max(full/8, 500*time.Millisecond); ; timeout *= 2 {
		bound := timeout + full/4
		if bound >= full {
			t.Fatalf("decompressing the bomb takes %v: a %v timeout cannot show it stops unpacking", full, timeout)
		}
		s := newService(t, t.TempDir(), Options{MaxUnpackedSize: 1 << 40, PullTimeout: timeout})
		start = time.Now()
		_, err = s.Pull(ctx, reg+"/bomb/files:1", nil)
		took := time.Since(start)
		t.Logf("decompressing the bomb takes at least %v; the pull with a %v timeout ended after %v: %v", full, timeout, took, err)
		if !errors.Is(err, context.DeadlineExceeded) || !errdefs.IsDeadlineExceeded(err) {
			t.Fatalf("pull ended with %v, not DeadlineExceeded", err)
		}
		if !strings.Contains(err.Error(), digest.FromBytes(bomb.blob).String()) {
			continue // the deadline came before the unpacking
		}
		if took > bound {
			t.Fatalf("the pull took %v past a %v timeout; decompressing the whole bomb takes %v", took, timeout, full)
		}
		if entries, _ := os.ReadDir(s.FSDir()); len(entries) != 0 {
			t.Fatalf("image-fs holds %v after the timeout", entries)
		}
		return
	}
}
