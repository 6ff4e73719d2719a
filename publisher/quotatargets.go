package publisher

import "sort"

// target is one app whose quota is asked about, with its own token: the
// paths its credentials are fetched from, and the apps whose ledgers
// count calls to each (an authorizer's token is fetched with its
// platform's component token, and counts at WeChat against the platform).
// The poller builds one per app each round and holds them for the round:
// a small slice of paths, not maps, since an app has one path or two.
type target struct {
	appid string
	paths []targetPath // sorted by path
}

// targetPath is one API path asked about for a target.
type targetPath struct {
	path     string
	counters []string // appids whose ledgers count calls to it
	issuing  bool     // the path issues the app's credentials
}

// of returns t's path, or nil when t does not ask about it.
func (t *target) of(path string) *targetPath {
	i := sort.Search(len(t.paths), func(i int) bool { return t.paths[i].path >= path })
	if i < len(t.paths) && t.paths[i].path == path {
		return &t.paths[i]
	}
	return nil
}

// issues says whether path issues t's credentials.
func (t *target) issues(path string) bool {
	tp := t.of(path)
	return tp != nil && tp.issuing
}

// counters are the appids whose ledgers count t's calls to path.
func (t *target) counters(path string) []string {
	if tp := t.of(path); tp != nil {
		return tp.counters
	}
	return nil
}

// add adds path to t (kept sorted) and returns it.
func (t *target) add(path string) *targetPath {
	if tp := t.of(path); tp != nil {
		return tp
	}
	i := sort.Search(len(t.paths), func(i int) bool { return t.paths[i].path >= path })
	t.paths = append(t.paths, targetPath{})
	copy(t.paths[i+1:], t.paths[i:])
	t.paths[i] = targetPath{path: path}
	return &t.paths[i]
}

// targetSet builds a round's targets.
type targetSet map[string]*target // by appid

// issuing records that appid's credential is fetched from path, counted
// in appid's ledger and at WeChat against owner (appid, or the platform
// whose token fetches it).
func (s targetSet) issuing(owner, appid, path string) {
	tp := s.get(owner).add(path)
	tp.issuing = true
	if !contains(tp.counters, appid) {
		tp.counters = append(tp.counters, appid)
	}
}

// reported records that the agents' proxies called path with appid's
// token: a path no credential of appid is fetched from is counted in
// appid's ledger only (of calls the ledger does not count).
func (s targetSet) reported(appid, path string) {
	if tp := s.get(appid).add(path); len(tp.counters) == 0 {
		tp.counters = []string{appid}
	}
}

func (s targetSet) get(appid string) *target {
	t := s[appid]
	if t == nil {
		t = &target{appid: appid}
		s[appid] = t
	}
	return t
}

// list returns the targets in a stable order, by appid.
func (s targetSet) list() []*target {
	list := make([]*target, 0, len(s))
	for _, t := range s {
		list = append(list, t)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].appid < list[j].appid })
	return list
}
