// Node.js http server: answers each request with the size of its body.
const http = require('http');
const srv = http.createServer((req, res) => { let n = 0; req.on('data', d => n += d.length); req.on('end', () => res.end('got ' + n)); });
srv.listen(+process.argv[3], process.argv[2], () => console.log('listening'));
