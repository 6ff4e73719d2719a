<?php
/*
 * A business server in PHP using `wxtoken agent`, written the way WeChat's
 * PHP tutorials call WeChat: curl_init, curl_setopt, curl_exec,
 * json_decode, and a new connection for every request, as under PHP-FPM.
 * Needs the curl and json extensions (php-cli, php-curl).
 *
 * Usage:
 *     php agent_client.php AGENT_URL APPID WECHAT_URL
 *     (or the environment: WXTOKEN_AGENT_URL, WECHAT_APPID, WECHAT_BASE_URL)
 *
 * AGENT_URL is the agent's base URL (http://127.0.0.1:8180), APPID the app it
 * serves, WECHAT_URL WeChat's base URL (in the tests: the fake WeChat the
 * agent forwards to), called directly in step f.
 *
 * Each step prints one line, "ok <step> <what> key=value ...", and the script
 * ends with "done". On any failure it prints "FAIL <step>: <why>" on stderr
 * and exits 1.
 *
 * The test protocol: where a step needs a token to be dead at WeChat, the
 * script prints "NEED revoke <revision>" and reads one line from stdin. The
 * test revokes that revision's token at the fake WeChat and writes "OK"; any
 * other line, or the end of stdin, fails the script.
 *
 * Steps:
 *   a  GET /v1/credentials/APPID: the JSON fields, ETag "<revision>", no-store
 *   b  the same with If-None-Match: 304
 *   c  long poll (?wait=30, If-None-Match) until a newer revision arrives
 *   d  NEED revoke; POST /v1/credentials/APPID/refresh {"stale_revision":N}
 *   e  WeChat's API through the agent: custom/send (an old token; and under
 *      /app/APPID/ with any token), /app/APPID/cgi-bin/user/get
 *   f  WeChat directly with a revoked token: 40001, refresh, retry: 0; then
 *      through the agent with a revoked token: the agent recovers by itself
 *   g  GET /cgi-bin/token at the agent: WeChat's shape, the held token
 *   h  the jsapi ticket, getticket at the agent, a wx.config signature
 */

const SEND_BODY = '{"touser":"oFAKE0000000000000000000001","msgtype":"text","text":{"content":"hello from wxtoken agent"}}';
const PAGE_URL = 'https://shop.example.com/pay?order=42&from=menu';

$step = '-';

function fail($why)
{
    global $step;
    fwrite(STDERR, "FAIL $step: $why\n");
    exit(1);
}

function ok($what, $fields = array())
{
    global $step;
    $line = "ok $step $what";
    foreach ($fields as $k => $v) {
        $line .= " $k=$v";
    }
    echo $line, "\n";
}

/*
 * One HTTP request on a connection of its own. Returns
 * array(status, headers (lower-case names), body); any HTTP status is an
 * answer.
 */
function http_request($method, $url, $headers = array(), $data = null, $timeout = 15)
{
    $curl = curl_init();
    curl_setopt($curl, CURLOPT_URL, $url);
    curl_setopt($curl, CURLOPT_RETURNTRANSFER, 1);
    curl_setopt($curl, CURLOPT_HEADER, 1);
    curl_setopt($curl, CURLOPT_CONNECTTIMEOUT, 5);
    curl_setopt($curl, CURLOPT_TIMEOUT, $timeout);
    if ($method == 'POST') {
        curl_setopt($curl, CURLOPT_POST, 1);
        curl_setopt($curl, CURLOPT_POSTFIELDS, $data === null ? '' : $data);
    }
    if (!empty($headers)) {
        curl_setopt($curl, CURLOPT_HTTPHEADER, $headers);
    }
    $output = curl_exec($curl);
    if ($output === false) {
        $error = curl_error($curl);
        curl_close($curl);
        fail("$method $url: $error");
    }
    $status = curl_getinfo($curl, CURLINFO_HTTP_CODE);
    $header_size = curl_getinfo($curl, CURLINFO_HEADER_SIZE);
    curl_close($curl);

    // The last header block is the answer's (after any 100 Continue).
    $blocks = explode("\r\n\r\n", trim(substr($output, 0, $header_size)));
    $parsed = array();
    foreach (explode("\r\n", end($blocks)) as $line) {
        $pos = strpos($line, ':');
        if ($pos !== false) {
            $parsed[strtolower(trim(substr($line, 0, $pos)))] = trim(substr($line, $pos + 1));
        }
    }
    return array($status, $parsed, (string) substr($output, $header_size));
}

function decode($url, $status, $body)
{
    $v = json_decode($body, true);
    if ($v === null && json_last_error() !== JSON_ERROR_NONE) {
        fail("$url: status $status, not JSON: " . substr($body, 0, 200));
    }
    return $v;
}

function need_revoke($revision)
{
    echo "NEED revoke $revision\n";
    $line = fgets(STDIN);
    if ($line === false || trim($line) !== 'OK') {
        fail("the test answered " . var_export($line, true) . " to NEED revoke $revision, not OK");
    }
}

function check_credential($c, $appid, $where)
{
    if (!is_array($c)) {
        fail("$where: not an object: " . var_export($c, true));
    }
    $dump = json_encode($c);
    if (!isset($c['key']) || $c['key'] !== $appid) {
        fail("$where: key is not $appid: $dump");
    }
    if (!isset($c['value']) || !is_string($c['value']) || $c['value'] === '') {
        fail("$where: no value: $dump");
    }
    if (!isset($c['revision']) || !is_int($c['revision']) || $c['revision'] <= 0) {
        fail("$where: revision is not a positive integer: $dump");
    }
    if (!isset($c['expires_in']) || !is_int($c['expires_in']) || $c['expires_in'] <= 0) {
        fail("$where: expires_in is not a positive integer: $dump");
    }
    if (!isset($c['expires_at']) || !is_string($c['expires_at'])
        || !preg_match('/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/', $c['expires_at'])) {
        fail("$where: expires_at is not RFC 3339: $dump");
    }
    return $c;
}

function get_credential($agent, $appid, $where)
{
    $url = "$agent/v1/credentials/$appid";
    list($status, $headers, $body) = http_request('GET', $url);
    if ($status != 200) {
        fail("$where: GET $url: status $status: " . substr($body, 0, 200));
    }
    return array(check_credential(decode($url, $status, $body), $appid, $where), $headers);
}

function refresh($agent, $appid, $stale)
{
    $url = "$agent/v1/credentials/$appid/refresh";
    $data = json_encode(array('stale_revision' => $stale));
    list($status, , $body) = http_request('POST', $url, array('Content-Type: application/json'), $data, 30);
    if ($status != 200) {
        fail("POST $url stale_revision=$stale: status $status: " . substr($body, 0, 300));
    }
    $c = check_credential(decode($url, $status, $body), $appid, 'refresh');
    if ($c['revision'] <= $stale) {
        fail("refresh of revision $stale answered revision {$c['revision']}, not a newer one");
    }
    if (!isset($c['refreshed']) || !is_bool($c['refreshed'])) {
        fail("refresh answer has no boolean refreshed: $body");
    }
    return $c;
}

/* A WeChat API call as the tutorials make it: the JSON body as POST fields. */
function wechat_call($url, $data = null, $headers = array())
{
    $method = $data === null ? 'GET' : 'POST';
    list($status, , $body) = http_request($method, $url, $headers, $data, 30);
    if ($status != 200) {
        fail("$method $url: status $status: " . substr($body, 0, 300));
    }
    $reply = decode($url, $status, $body);
    if (!is_array($reply)) {
        fail("$method $url: not an object: $body");
    }
    return $reply;
}

function errcode_is($reply, $code)
{
    return isset($reply['errcode']) && $reply['errcode'] === $code;
}

function flag($b)
{
    return $b ? 'true' : 'false';
}

$agent = rtrim(isset($argv[1]) ? $argv[1] : (string) getenv('WXTOKEN_AGENT_URL'), '/');
$appid = isset($argv[2]) ? $argv[2] : (string) getenv('WECHAT_APPID');
$wechat = rtrim(isset($argv[3]) ? $argv[3] : (string) getenv('WECHAT_BASE_URL'), '/');
if ($agent === '' || $appid === '' || $wechat === '') {
    fail('usage: php agent_client.php AGENT_URL APPID WECHAT_URL');
}
$cred_url = "$agent/v1/credentials/$appid";

$step = 'a';
list($first, $headers) = get_credential($agent, $appid, 'GET credential');
$etag = isset($headers['etag']) ? $headers['etag'] : '';
if ($etag !== '"' . $first['revision'] . '"') {
    fail("ETag '$etag', want \"{$first['revision']}\"");
}
if (!isset($headers['cache-control']) || strpos($headers['cache-control'], 'no-store') === false) {
    fail('Cache-Control is not no-store: ' . json_encode($headers));
}
ok('credential', array('revision' => $first['revision'], 'expires_in' => $first['expires_in'], 'etag' => $etag));

$step = 'b';
$held = $first;
for ($attempt = 0; ; $attempt++) {
    list($status, , $body) = http_request('GET', $cred_url, array('If-None-Match: "' . $held['revision'] . '"'));
    if ($status == 304) {
        if ($body !== '') {
            fail('304 with a body: ' . substr($body, 0, 200));
        }
        break;
    }
    if ($status == 200 && $attempt == 0) {
        // A rotation between a and b: the newer revision, then 304 for it.
        $held = check_credential(decode($cred_url, $status, $body), $appid, 'If-None-Match');
        if ($held['revision'] <= $first['revision']) {
            fail("If-None-Match $etag: 200 with revision {$held['revision']}, not newer");
        }
        continue;
    }
    fail("If-None-Match \"{$held['revision']}\": status $status, want 304: " . substr($body, 0, 200));
}
ok('not-modified', array('etag' => '"' . $held['revision'] . '"'));

$step = 'c';
$old = $held;
$rotated = null;
for ($i = 0; $i < 4 && $rotated === null; $i++) {
    list($status, $headers, $body) = http_request('GET', "$cred_url?wait=30",
        array('If-None-Match: "' . $old['revision'] . '"'), null, 45);
    if ($status == 304) {
        continue; // wait ran out with no rotation: ask again
    }
    if ($status != 200) {
        fail("long poll: status $status: " . substr($body, 0, 200));
    }
    $rotated = check_credential(decode($cred_url, $status, $body), $appid, 'long poll');
    if ($rotated['revision'] <= $old['revision']) {
        fail("long poll after {$old['revision']} answered revision {$rotated['revision']}");
    }
    if ($rotated['value'] === $old['value']) {
        fail("revision {$rotated['revision']} holds the token of revision {$old['revision']}");
    }
    if (!isset($headers['etag']) || $headers['etag'] !== '"' . $rotated['revision'] . '"') {
        fail("long poll: ETag " . json_encode($headers) . " for revision {$rotated['revision']}");
    }
}
if ($rotated === null) {
    fail("no revision after {$old['revision']} in four long polls");
}
ok('rotated', array('from' => $old['revision'], 'revision' => $rotated['revision']));

$step = 'd';
$stale = $rotated;
need_revoke($stale['revision']);
$renewed = refresh($agent, $appid, $stale['revision']);
if ($renewed['value'] === $stale['value']) {
    fail("refresh answered the revoked token again, as revision {$renewed['revision']}");
}
list($now) = get_credential($agent, $appid, 'GET after refresh');
if ($now['revision'] < $renewed['revision']) {
    fail("after the refresh answered {$renewed['revision']} the agent serves {$now['revision']}");
}
ok('refresh', array('stale' => $stale['revision'], 'revision' => $renewed['revision'],
    'refreshed' => flag($renewed['refreshed'])));

$step = 'e';
$reply = wechat_call("$agent/cgi-bin/message/custom/send?access_token=" . urlencode($stale['value']), SEND_BODY);
if (!errcode_is($reply, 0)) {
    fail('custom/send with an old token through the agent: ' . json_encode($reply));
}
ok('proxy-send', array('errcode' => $reply['errcode']));
$reply = wechat_call("$agent/app/$appid/cgi-bin/message/custom/send?access_token=ANYTHING", SEND_BODY);
if (!errcode_is($reply, 0)) {
    fail("custom/send under /app/$appid/ with access_token=ANYTHING: " . json_encode($reply));
}
ok('proxy-send-prefix', array('errcode' => $reply['errcode']));
$reply = wechat_call("$agent/app/$appid/cgi-bin/user/get");
if (!isset($reply['total']) || !is_int($reply['total'])) {
    fail('user/get through the agent: ' . json_encode($reply));
}
ok('proxy-user-get', array('total' => $reply['total']));

$step = 'f';
list($held) = get_credential($agent, $appid, 'GET before the direct call');
need_revoke($held['revision']);
$send = "$wechat/cgi-bin/message/custom/send?access_token=";
$reply = wechat_call($send . urlencode($held['value']), SEND_BODY);
if (!isset($reply['errcode']) || !in_array($reply['errcode'], array(40001, 40014, 42001), true)) {
    fail('WeChat accepted a revoked token, or answered otherwise: ' . json_encode($reply));
}
ok('direct-rejected', array('errcode' => $reply['errcode'], 'revision' => $held['revision']));
$renewed = refresh($agent, $appid, $held['revision']);
ok('direct-refresh', array('stale' => $held['revision'], 'revision' => $renewed['revision'],
    'refreshed' => flag($renewed['refreshed'])));
$reply = wechat_call($send . urlencode($renewed['value']), SEND_BODY);
if (!errcode_is($reply, 0)) {
    fail('WeChat refused the refreshed token: ' . json_encode($reply));
}
ok('direct-retry', array('errcode' => $reply['errcode'], 'revision' => $renewed['revision']));

list($held) = get_credential($agent, $appid, 'GET before the proxied call');
need_revoke($held['revision']);
$reply = wechat_call("$agent/cgi-bin/message/custom/send?access_token=" . urlencode($held['value']), SEND_BODY,
    array('Cookie: PHPSESSID=agent-client-session'));
if (!errcode_is($reply, 0)) {
    fail('custom/send through the agent with a revoked token: ' . json_encode($reply)
        . ' (the agent should refresh and retry)');
}
list($now) = get_credential($agent, $appid, 'GET after the proxied call');
if ($now['revision'] <= $held['revision']) {
    fail("the agent still serves revision {$now['revision']}, the revoked one");
}
ok('proxy-recovered', array('errcode' => $reply['errcode'], 'stale' => $held['revision'], 'revision' => $now['revision']));

$step = 'g';
$reply = wechat_call("$agent/cgi-bin/token?grant_type=client_credential&appid=$appid&secret=whatever");
list($now) = get_credential($agent, $appid, 'GET after cgi-bin/token');
if (!isset($reply['access_token']) || $reply['access_token'] !== $now['value']) {
    fail('cgi-bin/token answered a token other than the held one: ' . json_encode($reply));
}
if (!isset($reply['expires_in']) || !is_int($reply['expires_in'])
    || $reply['expires_in'] <= 0 || $reply['expires_in'] > $now['expires_in'] + 2) {
    fail("cgi-bin/token: expires_in is off, the held token has {$now['expires_in']}: " . json_encode($reply));
}
ok('token-endpoint', array('expires_in' => $reply['expires_in'], 'revision' => $now['revision']));

$step = 'h';
list($ticket) = get_credential($agent, "$appid.jsapi_ticket", 'GET ticket');
$reply = wechat_call("$agent/cgi-bin/ticket/getticket?access_token=" . urlencode($now['value']) . '&type=jsapi');
if (!errcode_is($reply, 0) || !isset($reply['ticket']) || $reply['ticket'] !== $ticket['value']
    || !isset($reply['expires_in']) || !is_int($reply['expires_in'])) {
    fail('getticket through the agent, want the held ticket: ' . json_encode($reply));
}
$config = wechat_call("$agent/v1/jssdk/$appid/config?url=" . urlencode(PAGE_URL)); // as the README writes it
if (!isset($config['appId'], $config['nonceStr'], $config['timestamp'], $config['signature']) || $config['appId'] !== $appid) {
    fail("wx.config for $appid: " . json_encode($config));
}
$plain = "jsapi_ticket={$ticket['value']}&noncestr={$config['nonceStr']}&timestamp={$config['timestamp']}&url=" . PAGE_URL;
if ($config['signature'] !== sha1($plain)) {
    fail("wx.config signature {$config['signature']} is not sha1 of $plain");
}
ok('jssdk', array('revision' => $ticket['revision'], 'timestamp' => $config['timestamp']));

echo "done\n";
