package publisher

import (
	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/kv"
)

// The agents' usage reports (kv.UsageReport, on <prefix>.usage) are read
// by two parts of the refresher: the quota poller keeps the API paths the
// agents' proxies called (quota.go), and the rid lookups take the rids
// WeChat's refusals named (rid.go). One subscription decodes each report
// once and hands it to both.

// listenForUsage takes in the agents' usage reports, on every replica,
// until the returned stop: each report is decoded once, then handed to
// the quota poller (if there is one) and to the rid lookups.
func (r *Refresher) listenForUsage() (stop func(), err error) {
	takers := []func(kv.UsageReport){r.rids.takeReport}
	if r.quota != nil {
		takers = append(takers, r.quota.takeReport)
	}
	sub, err := r.nc.Subscribe(kv.Subjects{Prefix: r.cfg.SubjectPrefix}.Usage(), func(m *nats.Msg) {
		report, err := kv.DecodeUsageReport(m.Data)
		if err != nil {
			r.log.Debug("usage report ignored", "error", err)
			return
		}
		for _, take := range takers {
			take(report)
		}
	})
	if err != nil {
		return nil, err
	}
	return func() { _ = sub.Unsubscribe() }, nil
}
