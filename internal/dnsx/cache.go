package dnsx

import (
	"container/list"
	"sync"
	"time"
)

// cache is a size-bounded LRU of answers that expire at their TTL. A nil
// *cache caches nothing.
type cache struct {
	mu    sync.Mutex
	max   int
	ll    *list.List // front = most recently used
	items map[string]*list.Element
}

type entry struct {
	key string
	ans *answer
}

func newCache(max int) *cache {
	return &cache{max: max, ll: list.New(), items: make(map[string]*list.Element, min(max, 4096))}
}

func (c *cache) get(key string, now time.Time) *answer {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return nil
	}
	e := el.Value.(*entry)
	if !now.Before(e.ans.expires) {
		c.ll.Remove(el)
		delete(c.items, key)
		return nil
	}
	c.ll.MoveToFront(el)
	return e.ans
}

func (c *cache) put(key string, a *answer) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		el.Value.(*entry).ans = a
		c.ll.MoveToFront(el)
		return
	}
	c.items[key] = c.ll.PushFront(&entry{key: key, ans: a})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.items, old.Value.(*entry).key)
	}
}

func (c *cache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
