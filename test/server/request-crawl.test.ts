/**
 * Announcing the mirror to relays (`--request-crawl`). No relay implementation is
 * on npm, so the relay here is `@atproto/xrpc-server` (the reference XRPC server,
 * which validates the request against the `com.atproto.sync.requestCrawl` lexicon)
 * with that one method, on loopback.
 */
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createServer as createHttpServer, type Server } from 'node:http'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer as createXrpcServer, InvalidRequestError } from '@atproto/xrpc-server'
import { schemas } from '@atproto/api'
import { CrawlRequester } from '../../src/server/request-crawl.ts'
import { createMirrorNode } from '../../src/node.ts'
import { requestCrawlFlags } from '../../bin/commands/daemon.ts'
import { until } from '../helpers/until.ts'

interface Relay {
  url: string
  asked: string[]
  close: () => Promise<void>
}

/** A relay's requestCrawl: records each hostname; `refuse` answers the lexicon's error instead. */
async function startRelay (refuse = false): Promise<Relay> {
  const asked: string[] = []
  const xrpc = createXrpcServer(schemas as never)
  xrpc.method('com.atproto.sync.requestCrawl', {
    handler: ({ input }: { input?: { body: { hostname: string } } }) => {
      if (refuse) throw new InvalidRequestError('this relay does not crawl that host', 'HostBanned')
      asked.push(input?.body.hostname ?? '')
    }
  } as never)
  const server: Server = createHttpServer(xrpc.router)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  return {
    url: `http://127.0.0.1:${port}`,
    asked,
    close: async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) }
  }
}

describe('requestCrawl: announcing the mirror to relays', () => {
  let relay: Relay
  let refusing: Relay
  let root: string

  before(async () => {
    relay = await startRelay()
    refusing = await startRelay(true)
    root = await mkdtemp(join(tmpdir(), 'atmirror-crawl-'))
  })

  after(async () => {
    await relay.close()
    await refusing.close()
    await rm(root, { recursive: true, force: true })
  })

  it('asks every relay once per pass with the public hostname, and keeps each outcome', async () => {
    const gone = await startRelay()
    await gone.close() // nothing listens there any more
    const crawl = new CrawlRequester({ relays: [relay.url, refusing.url, gone.url], hostname: 'Mirror.Example.TEST:8443', allowLoopback: true })
    const before = relay.asked.length
    const results = await crawl.announce()
    assert.deepEqual(relay.asked.slice(before), ['mirror.example.test:8443'])
    assert.equal(crawl.passes, 1)
    assert.deepEqual(results.map(r => [r.relay, r.ok]), [[relay.url, true], [refusing.url, false], [gone.url, false]])
    assert.match(results[1].error ?? '', /^HTTP 400 HostBanned: this relay does not crawl that host$/)
    assert.match(results[2].error ?? '', /connection refused/)
    assert.deepEqual(crawl.status(), results)
  })

  it('goes through the address policy: a relay on loopback is refused unless allowed', async () => {
    const crawl = new CrawlRequester({ relays: [relay.url], hostname: 'mirror.example.test' })
    const before = relay.asked.length
    const [result] = await crawl.announce()
    assert.equal(result.ok, false)
    assert.match(result.error ?? '', /loopback/)
    assert.equal(relay.asked.length, before)
  })

  it('refuses a hostname with a scheme or path, and a relay that is not an http(s) URL', () => {
    assert.throws(() => new CrawlRequester({ relays: [relay.url], hostname: 'https://mirror.example.test' }), { name: 'ConfigError', message: /hostname=/ })
    assert.throws(() => new CrawlRequester({ relays: [relay.url], hostname: 'mirror.example.test/x' }), { name: 'ConfigError' })
    assert.throws(() => new CrawlRequester({ relays: ['ftp://relay.example.test'], hostname: 'mirror.example.test' }), { name: 'ConfigError', message: /relay=ftp:/ })
  })

  it('a node with --http announces itself when it starts and shows the outcome in its status', async () => {
    const node = await createMirrorNode({
      dataDir: join(root, 'node'),
      allowHttpLocalhost: true,
      network: false,
      api: false,
      http: { port: 0 },
      requestCrawl: { relays: [relay.url, refusing.url], hostname: 'mirror.example.test' },
      checkOnStart: false,
      intervalMs: 0
    })
    const before = relay.asked.length
    try {
      await node.start()
      await until('both relays asked', async () => (await node.status()).crawlRequests?.length === 2)
      const status = await node.status()
      assert.deepEqual(relay.asked.slice(before), ['mirror.example.test'])
      assert.deepEqual(status.crawlRequests?.map(r => [r.relay, r.ok]), [[relay.url, true], [refusing.url, false]])
    } finally {
      await node.stop()
    }
  })

  it('a node without the public HTTP server cannot announce one: ConfigError, the data directory released', async () => {
    const dataDir = join(root, 'no-http')
    await assert.rejects(createMirrorNode({ dataDir, network: false, api: false, requestCrawl: { relays: [relay.url], hostname: 'mirror.example.test' } }), { name: 'ConfigError' })
    const node = await createMirrorNode({ dataDir, network: false, api: false })
    await node.stop()
  })

  it('daemon flags: --request-crawl needs --public-hostname and --http, and the reverse', () => {
    assert.equal(requestCrawlFlags(undefined, undefined, undefined), undefined)
    assert.deepEqual(requestCrawlFlags(['https://relay.example.test'], 'mirror.example.test', '0.0.0.0:2584'), { relays: ['https://relay.example.test'], hostname: 'mirror.example.test' })
    assert.throws(() => requestCrawlFlags(['https://relay.example.test'], undefined, '2584'), { name: 'UsageError', message: /--public-hostname/ })
    assert.throws(() => requestCrawlFlags(['https://relay.example.test'], 'mirror.example.test', undefined), { name: 'UsageError', message: /--http/ })
    assert.throws(() => requestCrawlFlags(undefined, 'mirror.example.test', '2584'), { name: 'UsageError', message: /only used with --request-crawl/ })
    assert.throws(() => requestCrawlFlags(['relay.example.test'], 'mirror.example.test', '2584'), { name: 'UsageError', message: /http\(s\) URL/ })
  })
})
