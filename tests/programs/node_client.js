// Node.js http client: 200 keep-alive POSTs (3 MB and 10 B bodies in turn);
// prints how many got the right answer.
const http = require('http');
const body = Buffer.alloc(3000000, 7);
let done = 0, ok = 0; const N = 200;
function one() {
  const req = http.request({host: process.argv[2], port: +process.argv[3], method: 'POST', agent: agent}, res => {
    let s = ''; res.on('data', d => s += d); res.on('end', () => { if (s === 'got ' + (done % 2 ? 10 : 3000000)) ok++; done++; if (done < N) one(); else { console.log(JSON.stringify({done, ok})); process.exit(0); } });
  });
  req.end(done % 2 ? Buffer.alloc(10) : body);
}
const agent = new http.Agent({keepAlive: true, maxSockets: 1});
one();
