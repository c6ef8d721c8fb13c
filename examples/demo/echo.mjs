#!/usr/bin/env node
// echo.mjs - header-echo upstream for the portcullis demo and end-to-end tests.
//
// Answers every path and method with 200 and the JSON {"method","path","headers"} (header names
// lowercase, repeated headers joined), so a test can see exactly what Envoy + portcullis passed
// upstream: the identity JWT header present, session cookie and spoofed headers stripped.
//
//   node examples/demo/echo.mjs --port 9200 [--host 127.0.0.1] [--log FILE]
//                               [--tls-cert PEM --tls-key PEM]
//
// --port 0 picks a free port. Prints "ready port=NNNN" once listening; exits 0 on SIGTERM/SIGINT.
// --log FILE appends the same JSON, one line per request (WebSocket upgrades included).
// --tls-cert/--tls-key serve HTTPS instead (the tests' check that Envoy verifies upstreams).
// WebSocket upgrades are accepted (101): the server sends the echo JSON as the first text
// message, then echoes every text/binary message back, and answers ping and close.
// Only node: built-ins, so it runs before/without `npm install`.

import { createHash } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: '9200' },
    host: { type: 'string', default: '127.0.0.1' },
    log: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
  },
});

function describe(req) {
  const headers = {};
  for (const [name, value] of Object.entries(req.headers)) {
    // node already lowercases names; only set-cookie arrives as an array.
    headers[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  const record = { method: req.method, path: req.url, headers };
  // The log is for tests; a failed write must not take the upstream down.
  if (opts.log) {
    try { appendFileSync(opts.log, `${JSON.stringify(record)}\n`); } catch (err) { console.error(`echo: log: ${err.message}`); }
  }
  return record;
}

const tls = opts['tls-cert'] && opts['tls-key']
  ? { cert: readFileSync(opts['tls-cert']), key: readFileSync(opts['tls-key']) }
  : null;
const server = (tls ? (h) => https.createServer(tls, h) : (h) => http.createServer(h))((req, res) => {
  const body = JSON.stringify(describe(req));
  req.resume(); // drain any request body
  res.writeHead(200, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(body);
});

// --- minimal WebSocket (RFC 6455) so upgrade requests through Envoy can be tested ---

function frame(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len])
    : len < 65536 ? Buffer.from([0x80 | opcode, 126, len >> 8, len & 255])
      : Buffer.concat([Buffer.from([0x80 | opcode, 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(len)); return b; })()]);
  return Buffer.concat([head, payload]);
}

const upgraded = new Set(); // upgraded sockets: server.close() would wait for them forever

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => socket.destroy());
  upgraded.add(socket);
  socket.on('close', () => upgraded.delete(socket));
  const record = describe(req);
  const key = req.headers['sec-websocket-key'];
  if (String(req.headers.upgrade).toLowerCase() !== 'websocket' || !key) {
    // Not a WebSocket: answer like any other request and close.
    const body = JSON.stringify(record);
    socket.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    return;
  }
  const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`);
  socket.write(frame(1, Buffer.from(JSON.stringify(record))));

  let buf = head && head.length ? Buffer.from(head) : Buffer.alloc(0);
  const pump = () => {
    // Parse as many complete client frames (always masked) as the buffer holds.
    for (;;) {
      if (buf.length < 2) return;
      const opcode = buf[0] & 0x0f;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const masked = (buf[1] & 0x80) !== 0;
      const need = off + (masked ? 4 : 0) + len;
      if (buf.length < need) return;
      const mask = masked ? buf.subarray(off, off + 4) : null;
      const payload = Buffer.from(buf.subarray(need - len, need));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      buf = buf.subarray(need);
      if (opcode === 8) { socket.end(frame(8, payload.subarray(0, 2))); return; } // close
      if (opcode === 9) socket.write(frame(10, payload)); // ping -> pong
      else if (opcode === 1 || opcode === 2) socket.write(frame(opcode, payload)); // echo
      // continuation (0) and pong (10) frames are ignored: enough for a test upstream.
    }
  };
  socket.on('data', (chunk) => { buf = Buffer.concat([buf, chunk]); pump(); });
  pump();
});

server.listen(Number(opts.port), opts.host, () => {
  console.log(`echo: ready port=${server.address().port}`);
});

function shutdown(signal) {
  console.log(`echo: ${signal}, exiting`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  for (const socket of upgraded) socket.destroy();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
