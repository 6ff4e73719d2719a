// Package publisher is the central token server: it fetches each app's
// access_token from WeChat (/cgi-bin/token or /cgi-bin/stable_token)
// before it expires, and what is fetched with it (JS-SDK tickets, WeCom's
// tokens and tickets, third-party platforms' and their authorizers'
// tokens), stores each in the token bucket under its key with
// compare-and-swap, announces every rotation, and answers refresh
// requests from services that saw a value rejected. Replicas elect one
// leader through a lease; only the leader talks to WeChat.
//
// This package is the refresher's face: what it is given (Config, the
// apps file), its life (New, Run, SetApps, Ready) and what it shows
// (metrics, the platforms' callback). The work is done by its internal
// packages; none of them imports one listed above it:
//
//   - internal/source: the kinds of credentials, one file each: how each
//     is fetched, and what else differs by kind, as the loop's optional
//     interfaces.
//   - internal/loop: the loop every credential goes through, whatever its
//     kind: due, fetch, store, announce, back off; the refresh endpoint;
//     the token bucket's life. It owns each credential's state.
//   - internal/platform: third-party platforms: the platform bucket, the
//     verify tickets and authorizers' refresh tokens it holds, and the
//     callback WeChat pushes to.
//   - internal/lease: leadership, and the fence that lets no call to
//     WeChat start that the lease might not cover; and the replicas'
//     published states, which decide who campaigns (peers.go).
//   - internal/standby: what a replica knows of whether it could lead:
//     each app's verdict from its probes, and the fix for each refusal.
//   - internal/ledger: the count of the refresher's own calls to WeChat,
//     per app, in the token bucket, which tells a token another party
//     ended from one the refresher ended itself.
//   - internal/upstream: the HTTP client of WeChat's APIs, what their
//     answers mean, the pacer, and the secrets the calls carry.
//
// Reading order: refresher.go (Config, New, Run: start-up, following the
// buckets, campaigning, leading), reload.go (the apps made credentials of the
// loop, on start and on every reload or change of authorizers), then the
// loop's package doc, and a kind in internal/source (token.go is the
// simplest). login.go (the agent's login-code exchanges, answered with
// the secrets the replica holds, apart from the loop; loginqueue.go: by
// every replica WeChat accepts them from, and by the leader), start.go,
// metrics.go, page.go (the status page; seen.go keeps the apps' ledgers
// and the last failures it shows), apps.go, config.go (Config's defaults and checks) and
// secretset.go (a secret set at run time, and a reloaded one checked
// before use) can be read when needed, and so can probes.go (each
// replica proves it could lead), standing.go (a replica that could
// lead fewer apps than another does not campaign), quota.go (the
// leader asks WeChat's quota/get how many calls each app made today, and
// says loudly when another party's are among them) and rid.go (the rids
// WeChat's refusals name, of the leader's fetches and the agents' calls,
// looked up with rid/get; usage.go hands both the agents' usage reports,
// decoded once).
package publisher
