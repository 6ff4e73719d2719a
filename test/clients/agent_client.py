#!/usr/bin/env python3
"""A business server in Python using `wxtoken agent`: the standard library only.

Usage:
    python3 agent_client.py AGENT_URL APPID WECHAT_URL
    (or the environment: WXTOKEN_AGENT_URL, WECHAT_APPID, WECHAT_BASE_URL)

AGENT_URL is the agent's base URL (http://127.0.0.1:8180), APPID the app it
serves, WECHAT_URL WeChat's base URL (in the tests: the fake WeChat the
agent forwards to), called directly in step f.

Each step prints one line, "ok <step> <what> key=value ...", and the script
ends with "done". On any failure it prints "FAIL <step>: <why>" on stderr
and exits 1.

The test protocol: where a step needs a token to be dead at WeChat, the
script prints "NEED revoke <revision>" and reads one line from stdin. The
test revokes that revision's token at the fake WeChat and writes "OK"; any
other line, or the end of stdin, fails the script.

Steps:
  a  GET /v1/credentials/APPID: the JSON fields, ETag "<revision>", no-store
  b  the same with If-None-Match: 304
  c  long poll (?wait=30, If-None-Match) until a newer revision arrives
  d  NEED revoke; POST /v1/credentials/APPID/refresh {"stale_revision":N}
  e  WeChat's API through the agent: custom/send (an old token; and under
     /app/APPID/ with any token), /app/APPID/cgi-bin/user/get
  f  WeChat directly with a revoked token: 40001, refresh, retry: 0; then
     through the agent with a revoked token: the agent recovers by itself
  g  GET /cgi-bin/token at the agent: WeChat's shape, the held token
  h  the jsapi ticket, getticket at the agent, a wx.config signature
"""

import datetime
import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

SEND_BODY = b'{"touser":"oFAKE0000000000000000000001","msgtype":"text","text":{"content":"hello from wxtoken agent"}}'
PAGE_URL = "https://shop.example.com/pay?order=42"

step = "-"

# No proxy from the environment: the agent is on this host.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fail(why):
    print(f"FAIL {step}: {why}", file=sys.stderr, flush=True)
    sys.exit(1)


def ok(what, **kv):
    fields = "".join(f" {k}={v}" for k, v in kv.items())
    print(f"ok {step} {what}{fields}", flush=True)


def request(method, url, headers=None, body=None, timeout=15):
    """Returns (status, headers, body); any HTTP status is an answer."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except (urllib.error.URLError, OSError) as e:
        fail(f"{method} {url}: {e}")


def decode(url, status, body):
    try:
        return json.loads(body)
    except ValueError:
        fail(f"{url}: status {status}, not JSON: {body[:200]!r}")


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def need_revoke(revision):
    print(f"NEED revoke {revision}", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "OK":
        fail(f"the test answered {line!r} to NEED revoke {revision}, not OK")


def check_credential(c, appid, where):
    """Checks the credential JSON of the own API and returns it."""
    if not isinstance(c, dict):
        fail(f"{where}: not an object: {c!r}")
    if c.get("key") != appid:
        fail(f"{where}: key {c.get('key')!r}, want {appid!r}")
    if not isinstance(c.get("value"), str) or not c["value"]:
        fail(f"{where}: no value: {c!r}")
    if not is_int(c.get("revision")) or c["revision"] <= 0:
        fail(f"{where}: revision {c.get('revision')!r} is not a positive integer")
    if not is_int(c.get("expires_in")) or c["expires_in"] <= 0:
        fail(f"{where}: expires_in {c.get('expires_in')!r} is not a positive integer")
    try:
        expires = datetime.datetime.fromisoformat(c.get("expires_at", ""))
    except (TypeError, ValueError):
        fail(f"{where}: expires_at {c.get('expires_at')!r} is not RFC 3339")
    if expires.tzinfo is None:
        fail(f"{where}: expires_at {c['expires_at']!r} has no zone")
    return c


def get_credential(agent, appid, where):
    url = f"{agent}/v1/credentials/{appid}"
    status, headers, body = request("GET", url)
    if status != 200:
        fail(f"{where}: GET {url}: status {status}: {body[:200]!r}")
    c = check_credential(decode(url, status, body), appid, where)
    return c, headers


def refresh(agent, appid, stale):
    url = f"{agent}/v1/credentials/{appid}/refresh"
    body = json.dumps({"stale_revision": stale}).encode()
    status, _, answer = request("POST", url, {"Content-Type": "application/json"}, body, timeout=30)
    if status != 200:
        fail(f"POST {url} stale_revision={stale}: status {status}: {answer[:300]!r}")
    c = check_credential(decode(url, status, answer), appid, "refresh")
    if c["revision"] <= stale:
        fail(f"refresh of revision {stale} answered revision {c['revision']}, not a newer one")
    if not isinstance(c.get("refreshed"), bool):
        fail(f"refresh answer has no boolean refreshed: {c!r}")
    return c


def wechat_call(method, url, body=None, headers=None):
    """A WeChat API call: HTTP 200 and a JSON object."""
    h = {"Content-Type": "application/json"} if body is not None else {}
    h.update(headers or {})
    status, _, answer = request(method, url, h, body, timeout=30)
    if status != 200:
        fail(f"{method} {url}: status {status}: {answer[:300]!r}")
    reply = decode(url, status, answer)
    if not isinstance(reply, dict):
        fail(f"{method} {url}: not an object: {reply!r}")
    return reply


def main():
    global step
    args = sys.argv[1:]
    agent = (args[0] if len(args) > 0 else os.environ.get("WXTOKEN_AGENT_URL", "")).rstrip("/")
    appid = args[1] if len(args) > 1 else os.environ.get("WECHAT_APPID", "")
    wechat = (args[2] if len(args) > 2 else os.environ.get("WECHAT_BASE_URL", "")).rstrip("/")
    if not agent or not appid or not wechat:
        fail("usage: agent_client.py AGENT_URL APPID WECHAT_URL")
    cred_url = f"{agent}/v1/credentials/{appid}"

    step = "a"
    first, headers = get_credential(agent, appid, "GET credential")
    etag = headers.get("ETag")
    if etag != f'"{first["revision"]}"':
        fail(f"ETag {etag!r}, want \"{first['revision']}\"")
    if "no-store" not in (headers.get("Cache-Control") or ""):
        fail(f"Cache-Control {headers.get('Cache-Control')!r}, want no-store")
    ok("credential", revision=first["revision"], expires_in=first["expires_in"], etag=etag)

    step = "b"
    held = first
    for attempt in range(2):
        status, headers, body = request("GET", cred_url, {"If-None-Match": f'"{held["revision"]}"'})
        if status == 304:
            if body:
                fail(f"304 with a body: {body[:200]!r}")
            break
        if status == 200 and attempt == 0:
            # A rotation between a and b: the newer revision, then 304 for it.
            held = check_credential(decode(cred_url, status, body), appid, "If-None-Match")
            if held["revision"] <= first["revision"]:
                fail(f"If-None-Match {etag}: 200 with revision {held['revision']}, not newer")
            continue
        fail(f"If-None-Match \"{held['revision']}\": status {status}, want 304: {body[:200]!r}")
    ok("not-modified", etag=f'"{held["revision"]}"')

    step = "c"
    old = held
    for _ in range(4):
        status, headers, body = request("GET", cred_url + "?wait=30",
                                        {"If-None-Match": f'"{old["revision"]}"'}, timeout=45)
        if status == 304:
            continue  # wait ran out with no rotation: ask again
        if status != 200:
            fail(f"long poll: status {status}: {body[:200]!r}")
        rotated = check_credential(decode(cred_url, status, body), appid, "long poll")
        if rotated["revision"] <= old["revision"]:
            fail(f"long poll after {old['revision']} answered revision {rotated['revision']}")
        if rotated["value"] == old["value"]:
            fail(f"revision {rotated['revision']} holds the token of revision {old['revision']}")
        if headers.get("ETag") != f'"{rotated["revision"]}"':
            fail(f"long poll: ETag {headers.get('ETag')!r} for revision {rotated['revision']}")
        break
    else:
        fail(f"no revision after {old['revision']} in four long polls")
    ok("rotated", **{"from": old["revision"]}, revision=rotated["revision"])

    step = "d"
    stale = rotated
    need_revoke(stale["revision"])
    renewed = refresh(agent, appid, stale["revision"])
    if renewed["value"] == stale["value"]:
        fail(f"refresh answered the revoked token again, as revision {renewed['revision']}")
    now, _ = get_credential(agent, appid, "GET after refresh")
    if now["revision"] < renewed["revision"]:
        fail(f"after the refresh answered {renewed['revision']} the agent serves {now['revision']}")
    ok("refresh", stale=stale["revision"], revision=renewed["revision"],
       refreshed=str(renewed["refreshed"]).lower())

    step = "e"
    old_token = urllib.parse.quote(stale["value"])
    reply = wechat_call("POST", f"{agent}/cgi-bin/message/custom/send?access_token={old_token}", SEND_BODY)
    if reply.get("errcode") != 0:
        fail(f"custom/send with an old token through the agent: {reply!r}")
    ok("proxy-send", errcode=reply["errcode"])
    reply = wechat_call("POST", f"{agent}/app/{appid}/cgi-bin/message/custom/send?access_token=ANYTHING", SEND_BODY)
    if reply.get("errcode") != 0:
        fail(f"custom/send under /app/{appid}/ with access_token=ANYTHING: {reply!r}")
    ok("proxy-send-prefix", errcode=reply["errcode"])
    reply = wechat_call("GET", f"{agent}/app/{appid}/cgi-bin/user/get")
    if not is_int(reply.get("total")):
        fail(f"user/get through the agent: {reply!r}")
    ok("proxy-user-get", total=reply["total"])

    step = "f"
    held, _ = get_credential(agent, appid, "GET before the direct call")
    need_revoke(held["revision"])
    send = f"{wechat}/cgi-bin/message/custom/send?access_token="
    reply = wechat_call("POST", send + urllib.parse.quote(held["value"]), SEND_BODY)
    if reply.get("errcode") not in (40001, 40014, 42001):
        fail(f"WeChat accepted a revoked token, or answered otherwise: {reply!r}")
    ok("direct-rejected", errcode=reply["errcode"], revision=held["revision"])
    renewed = refresh(agent, appid, held["revision"])
    ok("direct-refresh", stale=held["revision"], revision=renewed["revision"],
       refreshed=str(renewed["refreshed"]).lower())
    reply = wechat_call("POST", send + urllib.parse.quote(renewed["value"]), SEND_BODY)
    if reply.get("errcode") != 0:
        fail(f"WeChat refused the refreshed token: {reply!r}")
    ok("direct-retry", errcode=reply["errcode"], revision=renewed["revision"])

    held, _ = get_credential(agent, appid, "GET before the proxied call")
    need_revoke(held["revision"])
    reply = wechat_call("POST", f"{agent}/cgi-bin/message/custom/send?access_token={urllib.parse.quote(held['value'])}",
                        SEND_BODY, {"Cookie": "PHPSESSID=agent-client-session"})
    if reply.get("errcode") != 0:
        fail(f"custom/send through the agent with a revoked token: {reply!r} (the agent should refresh and retry)")
    now, _ = get_credential(agent, appid, "GET after the proxied call")
    if now["revision"] <= held["revision"]:
        fail(f"the agent still serves revision {now['revision']}, the revoked one")
    ok("proxy-recovered", errcode=reply["errcode"], stale=held["revision"], revision=now["revision"])

    step = "g"
    url = f"{agent}/cgi-bin/token?grant_type=client_credential&appid={appid}&secret=whatever"
    reply = wechat_call("GET", url)
    now, _ = get_credential(agent, appid, "GET after cgi-bin/token")
    if reply.get("access_token") != now["value"]:
        fail(f"cgi-bin/token answered a token other than the held one: {reply!r}")
    if not is_int(reply.get("expires_in")) or not 0 < reply["expires_in"] <= now["expires_in"] + 2:
        fail(f"cgi-bin/token: expires_in {reply.get('expires_in')!r}, the held token has {now['expires_in']}")
    ok("token-endpoint", expires_in=reply["expires_in"], revision=now["revision"])

    step = "h"
    ticket_key = appid + ".jsapi_ticket"
    ticket, _ = get_credential(agent, ticket_key, "GET ticket")
    reply = wechat_call("GET", f"{agent}/cgi-bin/ticket/getticket?access_token={urllib.parse.quote(now['value'])}&type=jsapi")
    if reply.get("errcode") != 0 or reply.get("ticket") != ticket["value"] or not is_int(reply.get("expires_in")):
        fail(f"getticket through the agent: {reply!r}, want the held ticket")
    url = f"{agent}/v1/jssdk/{appid}/config?url={urllib.parse.quote(PAGE_URL, safe='')}"
    config = wechat_call("GET", url)
    if config.get("appId") != appid:
        fail(f"wx.config for {appid}: {config!r}")
    plain = f"jsapi_ticket={ticket['value']}&noncestr={config.get('nonceStr')}&timestamp={config.get('timestamp')}&url={PAGE_URL}"
    if config.get("signature") != hashlib.sha1(plain.encode()).hexdigest():
        fail(f"wx.config signature {config.get('signature')!r} is not sha1 of {plain!r}")
    ok("jssdk", revision=ticket["revision"], timestamp=config["timestamp"])

    print("done", flush=True)


if __name__ == "__main__":
    main()
