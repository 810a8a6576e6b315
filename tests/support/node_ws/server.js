// A strict third-party WebSocket echo server for wsmanager's tests: the npm `ws` package.
// `ws` validates UTF-8 in Text frames and closes the connection with 1007 when a Text frame is
// not valid UTF-8 (RFC 6455 §8.1), which is why correlated Sends on Text frames carry the
// correlation id as 32 hex digits, not as raw UUID bytes.
// Prints {"port": N} on stdout once listening on 127.0.0.1 (a free port), echoes every message
// with its type, and exits on SIGTERM.
'use strict';
const { WebSocketServer } = require('ws');

const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
server.on('listening', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
server.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  socket.on('error', () => {}); // invalid UTF-8 and the like: `ws` closes the socket itself
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
