package classify

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Item is one message read from a corpus.
type Item struct {
	Name  string // path (file, Maildir entry), member name (tar) or "mbox#N"
	Label Label  // from the path (ham/ or spam/ prefix) when asked, else Unknown
	Data  []byte
}

// maxItemBytes bounds one message read from a corpus.
const maxItemBytes = 32 << 20

// LabelFromPath returns Ham or Spam when a path component is "ham" or
// "spam" (the corpus layout ham/*.eml, spam/*.eml), or names one of them
// as a word of its own (SpamAssassin's public corpus folders easy_ham,
// hard_ham, spam_2; "ham-2024"), else Unknown. The first component that
// says one, and only one, of the two decides.
func LabelFromPath(name string) Label {
	for _, c := range strings.Split(filepath.ToSlash(name), "/") {
		var ham, spam bool
		for _, w := range strings.FieldsFunc(strings.ToLower(c), func(r rune) bool {
			return !('a' <= r && r <= 'z')
		}) {
			ham = ham || w == "ham"
			spam = spam || w == "spam"
		}
		switch {
		case ham && !spam:
			return Ham
		case spam && !ham:
			return Spam
		}
	}
	return Unknown
}

// ReadSource reads every message of path: a .tar.gz/.tgz/.tar.bz2/.tbz2/.tar
// archive, a
// Maildir (cur/ and new/), a directory of message files, an mbox file, or
// a single message file. fn is called once per message, in a deterministic
// order (sorted names; mbox file order).
//
// An archive or a directory may carry a TREC-style index instead of ham/
// and spam/ folders: a file named "index" whose lines are "spam PATH" or
// "ham PATH", PATH relative to the index's own folder (TREC's full/index
// says "spam ../data/inmail.1"). Then the index gives each message its
// label and the order (the corpus's own, chronological for TREC), the
// index itself is not a message, and files it does not list are left out.
func ReadSource(path string, fn func(Item) error) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	switch {
	case st.IsDir():
		return readDir(path, fn)
	case IsArchive(path):
		return readTar(path, fn)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	head, _ := br.Peek(5)
	if string(head) == "From " {
		return readMbox(path, br, fn)
	}
	data, err := io.ReadAll(io.LimitReader(br, maxItemBytes))
	if err != nil {
		return err
	}
	return fn(Item{Name: path, Label: LabelFromPath(path), Data: data})
}

func readDir(dir string, fn func(Item) error) error {
	items, err := ListDir(dir)
	if err != nil {
		return err
	}
	for _, it := range items {
		if it.Data, err = readFile(it.Name); err != nil {
			return err
		}
		if err := fn(it); err != nil {
			return err
		}
	}
	return nil
}

// ListDir lists the messages of a directory source (a Maildir or a tree
// of message files) in ReadSource's order, without reading them: each
// Item has its Name and the Label its path below dir gives, and no Data
// (LoadItem reads it). Counting or splitting a large corpus by class
// then costs no file reads (but for a file called index, read to see
// whether it is a TREC-style index; see ReadSource).
func ListDir(dir string) ([]Item, error) {
	var items []Item
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "tmp" && p != dir {
				return filepath.SkipDir // Maildir tmp/: messages being delivered
			}
			return nil
		}
		if d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".") {
			rel, _ := filepath.Rel(dir, p)
			items = append(items, Item{Name: p, Label: LabelFromPath(rel)})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(items, func(i, j int) bool { return items[i].Name < items[j].Name })
	return applyIndex(items, LoadItem)
}

// LoadItem reads the data of an Item listed by ListDir (a no-op when it
// has its data already).
func LoadItem(it *Item) error {
	if it.Data != nil {
		return nil
	}
	data, err := readFile(it.Name)
	if err != nil {
		return err
	}
	it.Data = data
	return nil
}

// IsArchive reports whether ReadSource reads path as a tar archive (by
// its name: .tar, .tar.gz, .tgz, .tar.bz2, .tbz2).
func IsArchive(path string) bool {
	low := strings.ToLower(path)
	for _, ext := range []string{".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2"} {
		if strings.HasSuffix(low, ext) {
			if st, err := os.Stat(path); err == nil && st.IsDir() {
				return false
			}
			return true
		}
	}
	return false
}

func readTar(path string, fn func(Item) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var r io.Reader = bufio.NewReaderSize(f, 1<<16)
	switch low := strings.ToLower(path); {
	case strings.HasSuffix(low, ".tar.bz2") || strings.HasSuffix(low, ".tbz2"):
		r = bzip2.NewReader(r) // SpamAssassin's public corpus comes so
	case !strings.HasSuffix(low, ".tar"):
		gz, err := gzip.NewReader(r)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		defer gz.Close()
		r = gz
	}
	tr := tar.NewReader(r)
	var items []Item
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		// The header gives the size: one allocation, not ReadAll's
		// doubling (the whole corpus is read before learning starts).
		data := make([]byte, min(h.Size, maxItemBytes))
		_, err = io.ReadFull(tr, data)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", path, h.Name, err)
		}
		items = append(items, Item{Name: h.Name, Label: LabelFromPath(h.Name), Data: data})
	}
	sort.Slice(items, func(i, j int) bool { return items[i].Name < items[j].Name })
	items, err = applyIndex(items, func(*Item) error { return nil })
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, it := range items {
		if err := fn(it); err != nil {
			return err
		}
	}
	return nil
}

// isIndex reports whether data starts as a TREC-style index: its first
// non-empty line is "spam PATH" or "ham PATH".
func isIndex(data []byte) bool {
	for line := range strings.SplitSeq(string(data[:min(len(data), 4096)]), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		l := strings.ToLower(f[0])
		return len(f) == 2 && (l == "spam" || l == "ham")
	}
	return false
}

// applyIndex applies a TREC-style index found among items (see
// ReadSource): the messages it lists, in its order, labelled by it. With
// no index, items are returned as they are. load reads an item's data
// (the files called index, here). A file called index whose first line
// is not an index line is a message like any other. Several indexes, or
// an index naming a message
// that is not there or a line that is neither "spam PATH" nor "ham PATH",
// are errors: a mislabelled evaluation is worse than none.
func applyIndex(items []Item, load func(*Item) error) ([]Item, error) {
	at := -1
	var idx Item
	for i, it := range items {
		if path.Base(filepath.ToSlash(it.Name)) != "index" {
			continue
		}
		if err := load(&it); err != nil {
			return nil, err
		}
		if !isIndex(it.Data) {
			continue // a message that happens to be called index
		}
		if at >= 0 {
			return nil, fmt.Errorf("two corpus indexes: %s and %s", items[at].Name, it.Name)
		}
		at, idx = i, it
	}
	if at < 0 {
		return items, nil
	}
	base := path.Dir(filepath.ToSlash(idx.Name))
	byName := make(map[string]int, len(items))
	for i, it := range items {
		byName[path.Clean(filepath.ToSlash(it.Name))] = i
	}
	out := make([]Item, 0, len(items)-1)
	used := make([]bool, len(items))
	for n, line := range strings.Split(string(idx.Data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		var l Label
		switch strings.ToLower(f[0]) {
		case "ham":
			l = Ham
		case "spam":
			l = Spam
		}
		if len(f) != 2 || l == Unknown {
			return nil, fmt.Errorf("%s:%d: want \"spam PATH\" or \"ham PATH\", got %q", idx.Name, n+1, line)
		}
		i, ok := byName[path.Clean(path.Join(base, f[1]))]
		if !ok || i == at {
			return nil, fmt.Errorf("%s:%d: %s is not in the corpus", idx.Name, n+1, f[1])
		}
		if used[i] {
			return nil, fmt.Errorf("%s:%d: %s is listed twice", idx.Name, n+1, f[1])
		}
		used[i] = true
		it := items[i]
		it.Label = l
		out = append(out, it)
	}
	return out, nil
}

// readMbox splits an mbox (mboxrd/mboxo) on "From " lines and unescapes
// ">From ".
func readMbox(path string, br *bufio.Reader, fn func(Item) error) error {
	var cur bytes.Buffer
	n := 0
	started := false
	emit := func() error {
		if !started {
			return nil
		}
		n++
		data := append([]byte(nil), cur.Bytes()...)
		cur.Reset()
		return fn(Item{Name: fmt.Sprintf("%s#%d", path, n), Label: LabelFromPath(path), Data: data})
	}
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			switch {
			case bytes.HasPrefix(line, []byte("From ")):
				if e := emit(); e != nil {
					return e
				}
				started = true
			case started:
				if bytes.HasPrefix(bytes.TrimLeft(line, ">"), []byte("From ")) && line[0] == '>' {
					line = line[1:]
				}
				if cur.Len() < maxItemBytes {
					cur.Write(line)
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return emit()
		}
		if err != nil {
			return err
		}
	}
}

// OnlineOrder returns the evaluation order of a labelled corpus (the TREC
// online protocol as Moat runs it):
//
//  1. ham and spam items are each sorted by name;
//  2. each list is shuffled with a PCG generator seeded (seed, 1) for ham
//     and (seed, 2) for spam (math/rand/v2 Shuffle);
//  3. the two lists are merged proportionally: at each step the next item
//     comes from the class whose consumed fraction (taken/size) is lower,
//     ham first on ties. So spam is spread evenly through the stream in the
//     corpus's own ratio.
//
// Items with an Unknown label are dropped.
func OnlineOrder(items []Item, seed uint64) []Item {
	var ham, spam []Item
	for _, it := range items {
		switch it.Label {
		case Ham:
			ham = append(ham, it)
		case Spam:
			spam = append(spam, it)
		}
	}
	sort.Slice(ham, func(i, j int) bool { return ham[i].Name < ham[j].Name })
	sort.Slice(spam, func(i, j int) bool { return spam[i].Name < spam[j].Name })
	rh := rand.New(rand.NewPCG(seed, 1))
	rh.Shuffle(len(ham), func(i, j int) { ham[i], ham[j] = ham[j], ham[i] })
	rs := rand.New(rand.NewPCG(seed, 2))
	rs.Shuffle(len(spam), func(i, j int) { spam[i], spam[j] = spam[j], spam[i] })
	out := make([]Item, 0, len(ham)+len(spam))
	h, s := 0, 0
	for h < len(ham) || s < len(spam) {
		takeHam := s >= len(spam) || (h < len(ham) && float64(h)*float64(len(spam)) <= float64(s)*float64(len(ham)))
		if takeHam {
			out = append(out, ham[h])
			h++
		} else {
			out = append(out, spam[s])
			s++
		}
	}
	return out
}
