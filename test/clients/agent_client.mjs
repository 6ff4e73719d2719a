#!/usr/bin/env node
// A business server in Node using `wxtoken agent`: Node 20's global fetch,
// no npm packages.
//
// Usage:
//     node agent_client.mjs AGENT_URL APPID WECHAT_URL
//     (or the environment: WXTOKEN_AGENT_URL, WECHAT_APPID, WECHAT_BASE_URL)
//
// AGENT_URL is the agent's base URL (http://127.0.0.1:8180), APPID the app it
// serves, WECHAT_URL WeChat's base URL (in the tests: the fake WeChat the
// agent forwards to), called directly in step f.
//
// Each step prints one line, "ok <step> <what> key=value ...", and the script
// ends with "done". On any failure it prints "FAIL <step>: <why>" on stderr
// and exits 1.
//
// The test protocol: where a step needs a token to be dead at WeChat, the
// script prints "NEED revoke <revision>" and reads one line from stdin. The
// test revokes that revision's token at the fake WeChat and writes "OK"; any
// other line, or the end of stdin, fails the script.
//
// Steps:
//   a  GET /v1/credentials/APPID: the JSON fields, ETag "<revision>", no-store
//   b  the same with If-None-Match: 304
//   c  long poll (?wait=30, If-None-Match) until a newer revision arrives
//   d  NEED revoke; POST /v1/credentials/APPID/refresh {"stale_revision":N}
//   e  WeChat's API through the agent: custom/send (an old token; and under
//      /app/APPID/ with any token), /app/APPID/cgi-bin/user/get
//   f  WeChat directly with a revoked token: 40001, refresh, retry: 0; then
//      through the agent with a revoked token: the agent recovers by itself
//   g  GET /cgi-bin/token at the agent: WeChat's shape, the held token
//   h  the jsapi ticket, getticket at the agent, a wx.config signature

import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';

const SEND_BODY = '{"touser":"oFAKE0000000000000000000001","msgtype":"text","text":{"content":"hello from wxtoken agent"}}';
const PAGE_URL = 'https://shop.example.com/pay?order=42';

let step = '-';

class Failure extends Error {}

function fail(why) {
  throw new Failure(why);
}

function ok(what, fields = {}) {
  const rest = Object.entries(fields).map(([k, v]) => ` ${k}=${v}`).join('');
  console.log(`ok ${step} ${what}${rest}`);
}

// stdin, one line at a time, for the NEED protocol.
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function needRevoke(revision) {
  console.log(`NEED revoke ${revision}`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== 'OK') {
    fail(`the test answered ${JSON.stringify(done ? null : value)} to NEED revoke ${revision}, not OK`);
  }
}

// request returns {status, headers, body}; any HTTP status is an answer.
async function request(method, url, { headers = {}, body, timeout = 15000 } = {}) {
  let resp;
  try {
    resp = await fetch(url, { method, headers, body, redirect: 'manual', signal: AbortSignal.timeout(timeout) });
  } catch (e) {
    fail(`${method} ${url}: ${e.cause ? e.cause.message || e.cause : e.message}`);
  }
  return { status: resp.status, headers: resp.headers, body: await resp.text() };
}

function decode(url, { status, body }) {
  try {
    return JSON.parse(body);
  } catch {
    fail(`${url}: status ${status}, not JSON: ${body.slice(0, 200)}`);
  }
}

const isInt = (v) => Number.isSafeInteger(v);

function checkCredential(c, appid, where) {
  if (c === null || typeof c !== 'object' || Array.isArray(c)) fail(`${where}: not an object: ${JSON.stringify(c)}`);
  const dump = JSON.stringify(c);
  if (c.key !== appid) fail(`${where}: key is not ${appid}: ${dump}`);
  if (typeof c.value !== 'string' || c.value === '') fail(`${where}: no value: ${dump}`);
  if (!isInt(c.revision) || c.revision <= 0) fail(`${where}: revision is not a positive integer: ${dump}`);
  if (!isInt(c.expires_in) || c.expires_in <= 0) fail(`${where}: expires_in is not a positive integer: ${dump}`);
  if (typeof c.expires_at !== 'string' || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(c.expires_at)
      || Number.isNaN(Date.parse(c.expires_at))) {
    fail(`${where}: expires_at is not RFC 3339: ${dump}`);
  }
  return c;
}

async function getCredential(agent, key, where) {
  const url = `${agent}/v1/credentials/${key}`;
  const resp = await request('GET', url);
  if (resp.status !== 200) fail(`${where}: GET ${url}: status ${resp.status}: ${resp.body.slice(0, 200)}`);
  return [checkCredential(decode(url, resp), key, where), resp.headers];
}

async function refresh(agent, appid, stale) {
  const url = `${agent}/v1/credentials/${appid}/refresh`;
  const resp = await request('POST', url, {
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ stale_revision: stale }),
    timeout: 30000,
  });
  if (resp.status !== 200) fail(`POST ${url} stale_revision=${stale}: status ${resp.status}: ${resp.body.slice(0, 300)}`);
  const c = checkCredential(decode(url, resp), appid, 'refresh');
  if (c.revision <= stale) fail(`refresh of revision ${stale} answered revision ${c.revision}, not a newer one`);
  if (typeof c.refreshed !== 'boolean') fail(`refresh answer has no boolean refreshed: ${resp.body}`);
  return c;
}

// wechatCall is a WeChat API call: HTTP 200 and a JSON object.
async function wechatCall(url, body, headers = {}) {
  const method = body === undefined ? 'GET' : 'POST';
  if (body !== undefined) headers = { 'Content-Type': 'application/json', ...headers };
  const resp = await request(method, url, { headers, body, timeout: 30000 });
  if (resp.status !== 200) fail(`${method} ${url}: status ${resp.status}: ${resp.body.slice(0, 300)}`);
  const reply = decode(url, resp);
  if (reply === null || typeof reply !== 'object' || Array.isArray(reply)) fail(`${method} ${url}: not an object: ${resp.body}`);
  return reply;
}

async function main() {
  const [argAgent, argApp, argWeChat] = process.argv.slice(2);
  const agent = (argAgent || process.env.WXTOKEN_AGENT_URL || '').replace(/\/+$/, '');
  const appid = argApp || process.env.WECHAT_APPID || '';
  const wechat = (argWeChat || process.env.WECHAT_BASE_URL || '').replace(/\/+$/, '');
  if (!agent || !appid || !wechat) fail('usage: node agent_client.mjs AGENT_URL APPID WECHAT_URL');
  const credURL = `${agent}/v1/credentials/${appid}`;

  step = 'a';
  const [first, headers] = await getCredential(agent, appid, 'GET credential');
  const etag = headers.get('etag');
  if (etag !== `"${first.revision}"`) fail(`ETag ${JSON.stringify(etag)}, want "${first.revision}"`);
  if (!(headers.get('cache-control') || '').includes('no-store')) {
    fail(`Cache-Control ${JSON.stringify(headers.get('cache-control'))}, want no-store`);
  }
  ok('credential', { revision: first.revision, expires_in: first.expires_in, etag });

  step = 'b';
  let held = first;
  for (let attempt = 0; ; attempt++) {
    const resp = await request('GET', credURL, { headers: { 'If-None-Match': `"${held.revision}"` } });
    if (resp.status === 304) {
      if (resp.body !== '') fail(`304 with a body: ${resp.body.slice(0, 200)}`);
      break;
    }
    if (resp.status === 200 && attempt === 0) {
      // A rotation between a and b: the newer revision, then 304 for it.
      held = checkCredential(decode(credURL, resp), appid, 'If-None-Match');
      if (held.revision <= first.revision) fail(`If-None-Match ${etag}: 200 with revision ${held.revision}, not newer`);
      continue;
    }
    fail(`If-None-Match "${held.revision}": status ${resp.status}, want 304: ${resp.body.slice(0, 200)}`);
  }
  ok('not-modified', { etag: `"${held.revision}"` });

  step = 'c';
  const old = held;
  let rotated = null;
  for (let i = 0; i < 4 && rotated === null; i++) {
    const resp = await request('GET', `${credURL}?wait=30`, {
      headers: { 'If-None-Match': `"${old.revision}"` },
      timeout: 45000,
    });
    if (resp.status === 304) continue; // wait ran out with no rotation: ask again
    if (resp.status !== 200) fail(`long poll: status ${resp.status}: ${resp.body.slice(0, 200)}`);
    rotated = checkCredential(decode(credURL, resp), appid, 'long poll');
    if (rotated.revision <= old.revision) fail(`long poll after ${old.revision} answered revision ${rotated.revision}`);
    if (rotated.value === old.value) fail(`revision ${rotated.revision} holds the token of revision ${old.revision}`);
    if (resp.headers.get('etag') !== `"${rotated.revision}"`) {
      fail(`long poll: ETag ${JSON.stringify(resp.headers.get('etag'))} for revision ${rotated.revision}`);
    }
  }
  if (rotated === null) fail(`no revision after ${old.revision} in four long polls`);
  ok('rotated', { from: old.revision, revision: rotated.revision });

  step = 'd';
  const stale = rotated;
  await needRevoke(stale.revision);
  let renewed = await refresh(agent, appid, stale.revision);
  if (renewed.value === stale.value) fail(`refresh answered the revoked token again, as revision ${renewed.revision}`);
  let [now] = await getCredential(agent, appid, 'GET after refresh');
  if (now.revision < renewed.revision) fail(`after the refresh answered ${renewed.revision} the agent serves ${now.revision}`);
  ok('refresh', { stale: stale.revision, revision: renewed.revision, refreshed: renewed.refreshed });

  step = 'e';
  let reply = await wechatCall(`${agent}/cgi-bin/message/custom/send?access_token=${encodeURIComponent(stale.value)}`, SEND_BODY);
  if (reply.errcode !== 0) fail(`custom/send with an old token through the agent: ${JSON.stringify(reply)}`);
  ok('proxy-send', { errcode: reply.errcode });
  reply = await wechatCall(`${agent}/app/${appid}/cgi-bin/message/custom/send?access_token=ANYTHING`, SEND_BODY);
  if (reply.errcode !== 0) fail(`custom/send under /app/${appid}/ with access_token=ANYTHING: ${JSON.stringify(reply)}`);
  ok('proxy-send-prefix', { errcode: reply.errcode });
  reply = await wechatCall(`${agent}/app/${appid}/cgi-bin/user/get`);
  if (!isInt(reply.total)) fail(`user/get through the agent: ${JSON.stringify(reply)}`);
  ok('proxy-user-get', { total: reply.total });

  step = 'f';
  [held] = await getCredential(agent, appid, 'GET before the direct call');
  await needRevoke(held.revision);
  const send = `${wechat}/cgi-bin/message/custom/send?access_token=`;
  reply = await wechatCall(send + encodeURIComponent(held.value), SEND_BODY);
  if (![40001, 40014, 42001].includes(reply.errcode)) {
    fail(`WeChat accepted a revoked token, or answered otherwise: ${JSON.stringify(reply)}`);
  }
  ok('direct-rejected', { errcode: reply.errcode, revision: held.revision });
  renewed = await refresh(agent, appid, held.revision);
  ok('direct-refresh', { stale: held.revision, revision: renewed.revision, refreshed: renewed.refreshed });
  reply = await wechatCall(send + encodeURIComponent(renewed.value), SEND_BODY);
  if (reply.errcode !== 0) fail(`WeChat refused the refreshed token: ${JSON.stringify(reply)}`);
  ok('direct-retry', { errcode: reply.errcode, revision: renewed.revision });

  [held] = await getCredential(agent, appid, 'GET before the proxied call');
  await needRevoke(held.revision);
  reply = await wechatCall(`${agent}/cgi-bin/message/custom/send?access_token=${encodeURIComponent(held.value)}`, SEND_BODY,
    { Cookie: 'PHPSESSID=agent-client-session' });
  if (reply.errcode !== 0) {
    fail(`custom/send through the agent with a revoked token: ${JSON.stringify(reply)} (the agent should refresh and retry)`);
  }
  [now] = await getCredential(agent, appid, 'GET after the proxied call');
  if (now.revision <= held.revision) fail(`the agent still serves revision ${now.revision}, the revoked one`);
  ok('proxy-recovered', { errcode: reply.errcode, stale: held.revision, revision: now.revision });

  step = 'g';
  reply = await wechatCall(`${agent}/cgi-bin/token?grant_type=client_credential&appid=${appid}&secret=whatever`);
  [now] = await getCredential(agent, appid, 'GET after cgi-bin/token');
  if (reply.access_token !== now.value) fail(`cgi-bin/token answered a token other than the held one: ${JSON.stringify(reply)}`);
  if (!isInt(reply.expires_in) || reply.expires_in <= 0 || reply.expires_in > now.expires_in + 2) {
    fail(`cgi-bin/token: expires_in is off, the held token has ${now.expires_in}: ${JSON.stringify(reply)}`);
  }
  ok('token-endpoint', { expires_in: reply.expires_in, revision: now.revision });

  step = 'h';
  const [ticket] = await getCredential(agent, `${appid}.jsapi_ticket`, 'GET ticket');
  reply = await wechatCall(`${agent}/cgi-bin/ticket/getticket?access_token=${encodeURIComponent(now.value)}&type=jsapi`);
  if (reply.errcode !== 0 || reply.ticket !== ticket.value || !isInt(reply.expires_in)) {
    fail(`getticket through the agent, want the held ticket: ${JSON.stringify(reply)}`);
  }
  const config = await wechatCall(`${agent}/v1/jssdk/${appid}/config?url=${encodeURIComponent(PAGE_URL)}`);
  if (config.appId !== appid || !config.nonceStr || !config.timestamp || !config.signature) {
    fail(`wx.config for ${appid}: ${JSON.stringify(config)}`);
  }
  const plain = `jsapi_ticket=${ticket.value}&noncestr=${config.nonceStr}&timestamp=${config.timestamp}&url=${PAGE_URL}`;
  if (config.signature !== createHash('sha1').update(plain).digest('hex')) {
    fail(`wx.config signature ${config.signature} is not sha1 of ${plain}`);
  }
  ok('jssdk', { revision: ticket.revision, timestamp: config.timestamp });

  console.log('done');
}

try {
  await main();
  process.exit(0);
} catch (e) {
  if (!(e instanceof Failure)) throw e;
  process.stderr.write(`FAIL ${step}: ${e.message}\n`);
  process.exit(1);
}
