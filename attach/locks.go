package attach

import "sync"

// keyedRWMutex is a set of read-write mutexes created on demand and dropped when unused.
type keyedRWMutex struct {
	mu    sync.Mutex
	locks map[string]*refRWMutex
}

type refRWMutex struct {
	sync.RWMutex
	refs int
}

func (k *keyedRWMutex) get(key string) *refRWMutex {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.locks == nil {
		k.locks = map[string]*refRWMutex{}
	}
	l := k.locks[key]
	if l == nil {
		l = &refRWMutex{}
		k.locks[key] = l
	}
	l.refs++
	return l
}

func (k *keyedRWMutex) put(key string, l *refRWMutex) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l.refs--
	if l.refs == 0 {
		delete(k.locks, key)
	}
}

func (k *keyedRWMutex) rlock(key string) (unlock func()) {
	l := k.get(key)
	l.RLock()
	return func() { l.RUnlock(); k.put(key, l) }
}

func (k *keyedRWMutex) lock(key string) (unlock func()) {
	l := k.get(key)
	l.Lock()
	return func() { l.Unlock(); k.put(key, l) }
}
