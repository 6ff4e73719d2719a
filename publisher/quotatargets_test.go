package publisher

import (
	"fmt"
	"reflect"
	"runtime"
	"testing"
)

// TestTargetsOfAPlatformAndTheAgents: a platform's authorizers' tokens
// count against the platform, whose target names their ledgers; a path
// the agents report is asked about once, an issuing one counted where it
// was; paths are in order.
func TestTargetsOfAPlatformAndTheAgents(t *testing.T) {
	set := targetSet{}
	set.issuing("wxplatform0000000", "wxplatform0000000", "/cgi-bin/component/api_component_token")
	set.issuing("wxplatform0000000", "wxauthorizer00001", "/cgi-bin/component/api_authorizer_token")
	set.issuing("wxplatform0000000", "wxauthorizer00002", "/cgi-bin/component/api_authorizer_token")
	set.issuing("wxapp000000000001", "wxapp000000000001", "/cgi-bin/token")
	set.issuing("wxapp000000000001", "wxapp000000000001", "/cgi-bin/token") // a second credential of the path
	set.reported("wxapp000000000001", "/cgi-bin/token")
	set.reported("wxapp000000000001", "/cgi-bin/message/send")
	set.reported("wxapp000000000001", "/cgi-bin/menu/get")

	list := set.list()
	if len(list) != 2 || list[0].appid != "wxapp000000000001" || list[1].appid != "wxplatform0000000" {
		t.Fatalf("targets %v, want the app's, then the platform's", list)
	}
	app, platform := list[0], list[1]
	want := []targetPath{
		{path: "/cgi-bin/menu/get", counters: []string{"wxapp000000000001"}},
		{path: "/cgi-bin/message/send", counters: []string{"wxapp000000000001"}},
		{path: "/cgi-bin/token", counters: []string{"wxapp000000000001"}, issuing: true},
	}
	if !reflect.DeepEqual(app.paths, want) {
		t.Errorf("the app's paths:\n%+v\nwant\n%+v", app.paths, want)
	}
	if !platform.issues("/cgi-bin/component/api_authorizer_token") || platform.issues("/cgi-bin/token") || app.issues("/cgi-bin/menu/get") {
		t.Error("issues says a path issues a credential it does not, or not one it does")
	}
	if got := platform.counters("/cgi-bin/component/api_authorizer_token"); !reflect.DeepEqual(got, []string{"wxauthorizer00001", "wxauthorizer00002"}) {
		t.Errorf("the authorizer path is counted in %v, want both authorizers' ledgers", got)
	}
	if platform.of("/cgi-bin/menu/get") != nil || platform.counters("/cgi-bin/menu/get") != nil {
		t.Error("the platform asks about a path only the app's agents reported")
	}
}

// BenchmarkTargetsMemory is the heap a round's targets hold, per app, for
// 10,000 apps with a token and a JS-SDK ticket each.
//
//	go test -run - -bench TargetsMemory -benchtime 1x ./publisher/
func BenchmarkTargetsMemory(b *testing.B) {
	const apps = 10_000
	appids := make([]string, apps)
	for i := range appids {
		appids[i] = fmt.Sprintf("wx%016x", i)
	}
	for b.Loop() {
		before := liveHeap()
		set := targetSet{}
		for _, appid := range appids {
			set.issuing(appid, appid, "/cgi-bin/token")
			set.issuing(appid, appid, "/cgi-bin/ticket/getticket")
		}
		list := set.list()
		set = nil
		held := liveHeap()
		runtime.KeepAlive(list)
		b.ReportMetric(float64(int64(held)-int64(before))/apps, "B/app")
	}
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
