/**
 * The public server's own behaviour, whatever is mounted on it: the health route,
 * mounted routes and XRPC methods, and the gate every request passes (read-only,
 * no body, bounded heads, per-client and overall limits).
 */
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { request } from 'node:http'
import { connect } from 'node:net'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { PublicServer } from '../../src/server/public-server.ts'
import { until } from '../helpers/until.ts'

/** A raw request (fetch cannot send a body with GET or a 20 KiB URL cleanly). */
async function raw (url: string, init: { method?: string, path?: string, body?: string } = {}): Promise<{ status: number, body: string, headers: Record<string, unknown> }> {
  const target = new URL(url)
  return await new Promise((resolve, reject) => {
    const headers = init.body === undefined ? {} : { 'content-length': Buffer.byteLength(init.body) }
    const req = request({ host: target.hostname, port: target.port, method: init.method ?? 'GET', path: init.path ?? '/', headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), headers: res.headers }) })
    })
    req.on('error', reject)
    if (init.body !== undefined) req.write(init.body)
    req.end()
  })
}

describe('public server', () => {
  let server: PublicServer
  const held: Array<() => void> = []

  before(async () => {
    server = new PublicServer({ port: 0, version: '9.9.9', maxPerClient: 3, maxRequests: 100 })
    server.mount({ path: '/hello', handler: (_req, res, url) => { res.end(`hello ${url.pathname}`) } })
    server.mount({
      path: '/hold',
      handler: async (_req, res) => {
        await new Promise<void>(resolve => held.push(resolve))
        res.end('released')
      }
    })
    server.mountXrpc((xrpc) => {
      xrpc.method('com.atproto.sync.getLatestCommit', () => ({ encoding: 'application/json', body: { cid: 'bafy', rev: '3kaaaaaaaaaaa' } }))
    })
    await server.start()
  })

  after(async () => {
    for (const release of held) release()
    await server.stop()
  })

  it('answers /xrpc/_health with its version', async () => {
    const res = await fetch(`${server.url}/xrpc/_health`)
    assert.equal(res.status, 200)
    assert.deepEqual(await res.json(), { version: '9.9.9' })
  })

  it('routes a mounted prefix and what is under it, not what merely starts alike', async () => {
    assert.equal(await (await fetch(`${server.url}/hello`)).text(), 'hello /hello')
    assert.equal(await (await fetch(`${server.url}/hello/there`)).text(), 'hello /hello/there')
    const other = await fetch(`${server.url}/helloworld`)
    assert.equal(other.status, 404)
    assert.equal((await other.json()).error, 'NotFound')
  })

  it('serves a mounted XRPC method, checking its parameters against the lexicon', async () => {
    const bad = await fetch(`${server.url}/xrpc/com.atproto.sync.getLatestCommit`)
    assert.equal(bad.status, 400)
    assert.equal((await bad.json()).error, 'InvalidRequest')
    const badDid = await fetch(`${server.url}/xrpc/com.atproto.sync.getLatestCommit?did=not-a-did`)
    assert.equal(badDid.status, 400)
    const good = await fetch(`${server.url}/xrpc/com.atproto.sync.getLatestCommit?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa`)
    assert.equal(good.status, 200)
    assert.deepEqual(await good.json(), { cid: 'bafy', rev: '3kaaaaaaaaaaa' })
  })

  it('answers an XRPC method it does not serve as not implemented', async () => {
    const res = await fetch(`${server.url}/xrpc/com.atproto.sync.listBlobs?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa`)
    assert.equal(res.status, 501)
    assert.equal((await res.json()).error, 'MethodNotImplemented')
  })

  it('refuses every method but GET and HEAD with 405', async () => {
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      const res = await raw(server.url, { method, path: '/xrpc/com.atproto.repo.createRecord' })
      assert.equal(res.status, 405, method)
      assert.equal(JSON.parse(res.body).error, 'MethodNotAllowed')
      assert.equal(res.headers.allow, 'GET, HEAD')
    }
    const head = await raw(server.url, { method: 'HEAD', path: '/xrpc/_health' })
    assert.equal(head.status, 200)
  })

  it('refuses a request with a body with 413', async () => {
    const res = await raw(server.url, { method: 'GET', path: '/xrpc/_health', body: 'x'.repeat(1000) })
    assert.equal(res.status, 413)
    assert.equal(JSON.parse(res.body).error, 'PayloadTooLarge')
  })

  it('refuses an oversized request head with 431', async () => {
    const res = await raw(server.url, { path: '/xrpc/com.atproto.sync.getBlocks?did=did:plc:x&cids=' + 'b'.repeat(20_000) })
    assert.equal(res.status, 431)
  })

  it('answers 429 beyond the per-client limit and frees the slots when answers end', async () => {
    const holding = [0, 1, 2].map(async () => await fetch(`${server.url}/hold`))
    await until('three requests held', () => held.length === 3)
    const refused = await fetch(`${server.url}/xrpc/_health`)
    assert.equal(refused.status, 429)
    assert.equal(refused.headers.get('retry-after'), '1')
    assert.equal((await refused.json()).error, 'RateLimitExceeded')
    for (const release of held.splice(0)) release()
    for (const res of await Promise.all(holding)) assert.equal(await res.text(), 'released')
    await until('slots freed', () => server.inFlight === 0)
    assert.equal((await fetch(`${server.url}/xrpc/_health`)).status, 200)
  })
})

describe('public server, overall limit', () => {
  it('answers 503 beyond maxRequests', async () => {
    const held: Array<() => void> = []
    const server = new PublicServer({ port: 0, maxPerClient: 10, maxRequests: 2, trustProxy: true })
    server.mount({ path: '/hold', handler: async (_req, res) => { await new Promise<void>(resolve => held.push(resolve)); res.end('ok') } })
    await server.start()
    try {
      // two clients (by X-Forwarded-For, trusted here) fill the two slots
      const holding = ['10.0.0.1', '10.0.0.2'].map(async ip => await fetch(`${server.url}/hold`, { headers: { 'x-forwarded-for': ip } }))
      await until('two requests held', () => held.length === 2)
      const refused = await fetch(`${server.url}/xrpc/_health`, { headers: { 'x-forwarded-for': '10.0.0.3' } })
      assert.equal(refused.status, 503)
      for (const release of held.splice(0)) release()
      await Promise.all((await Promise.all(holding)).map(async res => await res.text()))
    } finally {
      await server.stop()
    }
  })
})

describe('public server, slow clients', () => {
  it('closes a connection whose client stops reading, and frees its slot', async () => {
    const server = new PublicServer({ port: 0, idleTimeoutMs: 300 })
    let produced = 0
    server.mount({
      path: '/big',
      handler: async (_req, res) => {
        // 256 MiB if anyone read it; a client that does not read stalls it after the socket buffers fill
        const chunk = Buffer.alloc(64 * 1024)
        const source = Readable.from((function * () { for (let i = 0; i < 4096; i++) { produced++; yield chunk } })())
        await pipeline(source, res).catch(() => {})
      }
    })
    await server.start()
    try {
      const socket = connect(server.address.port, '127.0.0.1')
      await new Promise<void>(resolve => socket.once('connect', () => { resolve() }))
      socket.write('GET /big HTTP/1.1\r\nhost: x\r\n\r\n')
      socket.pause() // and never read
      await until('the request in flight', () => server.inFlight === 1)
      await until('the stalled connection closed and its slot freed', () => server.inFlight === 0, { timeout: 20_000 })
      socket.destroy()
      assert.ok(produced < 4096, `the server stopped producing (${produced} of 4096 chunks)`)
    } finally {
      await server.stop()
    }
  })
})
