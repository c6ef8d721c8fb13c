#!/usr/bin/env node
// cockpit_ws.mjs - opens Cockpit's WebSocket (`/cockpit/socket`) the way the Cockpit shell
// does, and reports what the bridge says, for the Cockpit end-to-end tests.
//
//   node testkit/js/cockpit_ws.mjs --url wss://cockpit.localhost:PORT/cockpit/socket \
//     [--cookie 'a=b; c=d'] [--origin https://cockpit.localhost:PORT] [--ca CA.pem] \
//     [--connect-to 127.0.0.1] [--timeout-ms 15000] [--hold] [--superuser sudo]
//
// Cockpit's protocol (doc/protocol.md): every WebSocket message is text, "CHANNEL\nPAYLOAD";
// the control channel is the empty string, so control messages are "\n{json}". The bridge
// first sends {"command":"init",...}; the client answers with its own init, then opens
// channels. Cockpit 287's init names the host but not the user, so this script asks twice:
//   * a "stream" channel runs `id -un` in the user's session: the Unix account the bridge
//     runs as;
//   * a "dbus-json3" channel on the bridge's internal bus reads the properties of
//     `cockpit.User` at /user, which is what the shell's user menu shows (cockpit.user()).
// With --superuser ID, it then does what "Turn on administrative access" does: calls
// cockpit.Superuser.Start(ID) at /superuser on the internal bus (a Prompt, which would ask
// the user for a password, is answered with Stop), and opens a stream channel with
// "superuser": "require" running `id -u`; "superuser" in the report has what Start said,
// the channel's output and how it closed.
//
// Prints one JSON object on stdout and exits 0 whenever it got an answer:
//   {"status":101, "init":{...}, "whoami":"alice", "user":{"Name":"alice",...},
//    "messages":["\n{...}", ...]}
//   {"status":403, "body":"..."}  when the upgrade was refused
// With --hold the socket stays open after the answers until the server ends it, and the
// report adds "closed_after_ms" (since the upgrade).
// Exits 1 with the reason on stderr on a transport error or timeout.
// --connect-to sends the TCP connection to that address whatever the host name resolves to
// (glibc does not resolve *.localhost); TLS still checks the URL's host name against --ca.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string' },
    cookie: { type: 'string' },
    origin: { type: 'string' },
    ca: { type: 'string' },
    'connect-to': { type: 'string' },
    'timeout-ms': { type: 'string', default: '15000' },
    // Keep the socket open after the answers, until the server ends it; report when.
    hold: { type: 'boolean', default: false },
    superuser: { type: 'string' },
  },
});
if (!opts.url) {
  console.error('usage: cockpit_ws.mjs --url URL [--cookie C] [--origin O] [--ca PEM] [--connect-to ADDR]');
  process.exit(1);
}

const demoRequire = createRequire(new URL('../../examples/demo/package.json', import.meta.url));
const WebSocket = demoRequire('ws');

const headers = {};
if (opts.cookie) headers.Cookie = opts.cookie;
const options = { headers, handshakeTimeout: Number(opts['timeout-ms']) };
if (opts.origin) options.origin = opts.origin;
if (opts.ca) options.ca = readFileSync(opts.ca);
if (opts['connect-to']) {
  const address = opts['connect-to'];
  options.lookup = (_host, lookupOptions, callback) =>
    lookupOptions && lookupOptions.all
      ? callback(null, [{ address, family: 4 }])
      : callback(null, address, 4);
}

const result = { status: null, messages: [] };
const done = (code = 0) => {
  console.log(JSON.stringify(result));
  process.exit(code);
};
const fail = (why) => {
  console.error(`cockpit_ws.mjs: ${why}`);
  result.error = why;
  done(1);
};
setTimeout(() => fail(`timed out after ${opts['timeout-ms']} ms`), Number(opts['timeout-ms'])).unref();

const ws = new WebSocket(opts.url, ['cockpit1'], options);

ws.on('unexpected-response', (_req, res) => {
  result.status = res.statusCode;
  let body = '';
  res.setEncoding('utf8');
  res.on('data', (chunk) => {
    body += chunk;
  });
  res.on('end', () => {
    result.body = body.slice(0, 2000);
    done(0);
  });
});
let openedAt = 0;
ws.on('upgrade', (res) => {
  result.status = res.statusCode;
  openedAt = Date.now();
});
ws.on('error', (err) => fail(`${err.code || ''} ${err.message}`.trim()));
ws.on('close', (code, reason) => {
  result.closed = { code, reason: reason.toString() };
  if (openedAt) result.closed_after_ms = Date.now() - openedAt;
  done(0);
});

const send = (channel, obj) => ws.send(`${channel}\n${typeof obj === 'string' ? obj : JSON.stringify(obj)}`);
let whoami = '';
let rootOut = '';
// Opens the privileged channel, once Start has answered either way.
const openRoot = () => {
  send('', { command: 'open', channel: 'r1', payload: 'stream', spawn: ['id', '-u'], superuser: 'require' });
};
// Both answers in (and the superuser steps, when asked for): close politely and report.
const maybeDone = () => {
  if (result.whoami === undefined || result.user === undefined) return;
  if (opts.superuser && !result.superuser) {
    result.superuser = {};
    send('', { command: 'open', channel: 's0', payload: 'dbus-json3', bus: 'internal' });
    send('s0', { 'add-match': { path: '/superuser', interface: 'cockpit.Superuser' } });
    send('s0', { call: ['/superuser', 'cockpit.Superuser', 'Start', [opts.superuser]], id: 'su1' });
    return;
  }
  if (opts.superuser && result.superuser.close === undefined) return;
  if (opts.hold) {
    result.held = true; // the 'close' handler reports when the server ends it
    return;
  }
  ws.close();
  done(0);
};
ws.on('message', (data) => {
  const text = data.toString();
  if (result.messages.length < 20) result.messages.push(text);
  const nl = text.indexOf('\n');
  const channel = text.slice(0, nl);
  const payload = text.slice(nl + 1);
  if (channel === '') {
    const msg = JSON.parse(payload);
    if (msg.command === 'init' && !result.init) {
      result.init = msg;
      send('', { command: 'init', version: 1 });
      send('', { command: 'open', channel: 'w1', payload: 'stream', spawn: ['id', '-un'] });
      send('', { command: 'open', channel: 'u1', payload: 'dbus-json3', bus: 'internal' });
      send('u1', { call: ['/user', 'org.freedesktop.DBus.Properties', 'GetAll', ['cockpit.User']], id: '1' });
    } else if (msg.command === 'close' && msg.channel === 'w1') {
      result.whoami = whoami.trim();
      result.whoami_close = msg;
      maybeDone();
    } else if (msg.command === 'close' && msg.channel === 'r1') {
      result.superuser.uid = rootOut.trim();
      result.superuser.close = msg;
      maybeDone();
    } else if (msg.command === 'close' && msg.channel === 's0' && result.superuser && result.superuser.start === undefined) {
      result.superuser.start = { closed: msg };
      openRoot();
    } else if (msg.command === 'close' && msg.channel === 'u1' && result.user === undefined) {
      result.user = { error: msg };
      maybeDone();
    } else if (msg.command === 'close' && !msg.channel) {
      result.control_close = msg;
    }
  } else if (channel === 'w1') {
    whoami += payload;
  } else if (channel === 'r1') {
    rootOut += payload;
  } else if (channel === 's0') {
    const msg = JSON.parse(payload);
    if (msg.signal && msg.signal[2] === 'Prompt') {
      // sudo wants a password, which a single sign-on user does not have: give up.
      result.superuser.prompt = msg.signal[3];
      send('s0', { call: ['/superuser', 'cockpit.Superuser', 'Stop', []], id: 'su-stop' });
    } else if (msg.id === 'su1') {
      result.superuser.start = msg.error ? { error: msg.error } : { ok: true };
      openRoot();
    }
  } else if (channel === 'u1') {
    const msg = JSON.parse(payload);
    if (msg.id === '1') {
      // {"reply":[[{"Name":{"t":"s","v":"alice"},...}]],"id":"1"}: GetAll's one out
      // argument, a{sv}; keep the plain values.
      const props = (msg.reply && msg.reply[0] && msg.reply[0][0]) || {};
      result.user = Object.fromEntries(Object.entries(props).map(([k, v]) => [k, v && 'v' in v ? v.v : v]));
      if (msg.error) result.user = { error: msg.error };
      maybeDone();
    }
  }
});
