// Command tlogcheck verifies what keyvault publishes with Go's golang.org/x/mod/sumdb/note and
// golang.org/x/mod/sumdb/tlog: the checkpoint note (note.Open with keyvault's verifier key), each
// witness cosignature (C2SP cosignature/v1: note.Open again, with a note.Verifier of type 0x04 per
// witness, since x/mod predates cosignatures), further notes judged the same way, the tiles (read
// through tlog.TileHashReader, which authenticates every tile against the checkpoint's root), the
// entry bundles, and keyvault's inclusion and consistency proofs (tlog.CheckRecord, tlog.CheckTree).
//
// Usage: tlogcheck INPUT.json; prints one "ok ..." line per check, exits 1 on the first failure; for each
// of the input's "notes", one line "note N: ok" (signed by the log and every witness) or "note N: refused:
// why" (never a failure).
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type input struct {
	Note      string `json:"note"`
	LogVkey   string `json:"log_vkey"`
	Witnesses []struct {
		Name      string `json:"name"`
		PublicKey []byte `json:"public_key"`
	} `json:"witnesses"`
	Notes     []string `json:"notes"`
	Tiles     string   `json:"tiles"`
	Inclusion []struct {
		Index int64    `json:"index"`
		Leaf  []byte   `json:"leaf"`
		Proof [][]byte `json:"proof"`
	} `json:"inclusion"`
	Consistency []struct {
		Old     int64    `json:"old"`
		OldRoot []byte   `json:"old_root"`
		Proof   [][]byte `json:"proof"`
	} `json:"consistency"`
}

// tileDir reads C2SP tiles (tile/<L>/<N>) from a directory; Go's paths carry the height (tile/8/<L>/<N>).
type tileDir struct{ dir string }

func (d tileDir) Height() int { return 8 }

func (d tileDir) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		path := strings.Replace(t.Path(), "tile/8/", "tile/", 1)
		data, err := os.ReadFile(filepath.Join(d.dir, filepath.FromSlash(path)))
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (d tileDir) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

// cosigner is a note.Verifier for a C2SP cosignature/v1 key (signature type 0x04): the signature is
// u64 timestamp || Ed25519 over "cosignature/v1\ntime <timestamp>\n" || the note text.
type cosigner struct {
	name string
	key  ed25519.PublicKey
	hash uint32
}

func newCosigner(name string, key []byte) cosigner {
	id := sha256.Sum256(append(append([]byte(name+"\n"), 0x04), key...))
	return cosigner{name, ed25519.PublicKey(key), binary.BigEndian.Uint32(id[:4])}
}

func (c cosigner) Name() string    { return c.name }
func (c cosigner) KeyHash() uint32 { return c.hash }
func (c cosigner) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize || len(c.key) != ed25519.PublicKeySize {
		return false
	}
	ts := binary.BigEndian.Uint64(sig[:8])
	signed := append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", ts)), msg...)
	return ed25519.Verify(c.key, signed, sig[8:])
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL "+format+"\n", args...)
	os.Exit(1)
}

func hashes(raw [][]byte) tlog.TreeProof {
	var p tlog.TreeProof
	for _, h := range raw {
		var x tlog.Hash
		copy(x[:], h)
		p = append(p, x)
	}
	return p
}

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("read input: %v", err)
	}
	var in input
	if err := json.Unmarshal(data, &in); err != nil {
		fail("parse input: %v", err)
	}
	verifier, err := note.NewVerifier(in.LogVkey)
	if err != nil {
		fail("log verifier key: %v", err)
	}
	n, err := note.Open([]byte(in.Note), note.VerifierList(verifier))
	if err != nil {
		fail("note.Open: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("tree size: %v", err)
	}
	rootBytes, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rootBytes) != 32 {
		fail("root: %v", err)
	}
	var root tlog.Hash
	copy(root[:], rootBytes)
	fmt.Printf("ok note.Open: %s, %d entries\n", lines[0], size)

	known := []note.Verifier{verifier}
	for _, w := range in.Witnesses {
		known = append(known, newCosigner(w.Name, w.PublicKey))
	}
	cosigned, err := note.Open([]byte(in.Note), note.VerifierList(known...))
	if err != nil {
		fail("note.Open with the witnesses' cosignature/v1 verifiers: a cosignature does not verify or is "+
			"malformed: %v", err)
	}
	for _, w := range known[1:] {
		found := false
		for _, sig := range cosigned.Sigs {
			found = found || (sig.Name == w.Name() && sig.Hash == w.KeyHash())
		}
		if !found {
			fail("no cosignature by %s", w.Name())
		}
		fmt.Printf("ok cosignature/v1 by %s (note.Open)\n", w.Name())
	}
	for i, text := range in.Notes {
		opened, err := note.Open([]byte(text), note.VerifierList(known...))
		if err == nil && len(opened.Sigs) != len(known) {
			err = fmt.Errorf("signed by %d of the %d verifiers", len(opened.Sigs), len(known))
		}
		if err != nil {
			fmt.Printf("note %d: refused: %v\n", i, err)
		} else {
			fmt.Printf("note %d: ok\n", i)
		}
	}

	tree := tlog.Tree{N: size, Hash: root}
	reader := tlog.TileHashReader(tree, tileDir{in.Tiles})
	th, err := tlog.TreeHash(size, reader)
	if err != nil || th != root {
		fail("tlog.TreeHash over the tiles: %v (%v != %v)", err, th, root)
	}
	fmt.Printf("ok tiles: tlog.TileHashReader and TreeHash reach the root of %d entries\n", size)

	for start := int64(0); start < size; start += 256 {
		width := size - start
		if width > 256 {
			width = 256
		}
		path := "tile/entries/" + strings.TrimPrefix(tlog.Tile{H: 8, L: 0, N: start / 256, W: int(width)}.Path(), "tile/8/0/")
		bundle, err := os.ReadFile(filepath.Join(in.Tiles, filepath.FromSlash(path)))
		if err != nil {
			fail("entry bundle %s: %v", path, err)
		}
		for i := int64(0); i < width; i++ {
			if len(bundle) < 2 {
				fail("entry bundle %s is short", path)
			}
			length := int(binary.BigEndian.Uint16(bundle))
			if len(bundle) < 2+length {
				fail("entry bundle %s is truncated", path)
			}
			want, err := reader.ReadHashes([]int64{tlog.StoredHashIndex(0, start+i)})
			if err != nil || tlog.RecordHash(bundle[2:2+length]) != want[0] {
				fail("entry %d does not hash to its leaf: %v", start+i, err)
			}
			bundle = bundle[2+length:]
		}
		if len(bundle) != 0 {
			fail("entry bundle %s has trailing bytes", path)
		}
	}
	fmt.Printf("ok entry bundles: every entry hashes to its leaf\n")

	for _, inc := range in.Inclusion {
		proof := tlog.RecordProof(hashes(inc.Proof))
		if err := tlog.CheckRecord(proof, size, root, inc.Index, tlog.RecordHash(inc.Leaf)); err != nil {
			fail("tlog.CheckRecord of entry %d: %v", inc.Index, err)
		}
		own, err := tlog.ProveRecord(size, inc.Index, reader)
		if err != nil || len(own) != len(proof) {
			fail("tlog.ProveRecord of entry %d differs: %v", inc.Index, err)
		}
		for i := range own {
			if own[i] != proof[i] {
				fail("tlog.ProveRecord of entry %d differs at hash %d", inc.Index, i)
			}
		}
	}
	fmt.Printf("ok inclusion: %d proofs pass tlog.CheckRecord and equal tlog.ProveRecord\n", len(in.Inclusion))

	for _, c := range in.Consistency {
		var old tlog.Hash
		copy(old[:], c.OldRoot)
		proof := hashes(c.Proof)
		if err := tlog.CheckTree(proof, size, root, c.Old, old); err != nil {
			fail("tlog.CheckTree from %d: %v", c.Old, err)
		}
		own, err := tlog.ProveTree(size, c.Old, reader)
		if err != nil || !bytes.Equal(flat(own), flat(proof)) {
			fail("tlog.ProveTree from %d differs: %v", c.Old, err)
		}
	}
	fmt.Printf("ok consistency: %d proofs pass tlog.CheckTree and equal tlog.ProveTree\n", len(in.Consistency))
}

func flat(p tlog.TreeProof) []byte {
	var out []byte
	for _, h := range p {
		out = append(out, h[:]...)
	}
	return out
}
