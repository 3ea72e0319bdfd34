/**
 * AtprotoIdentityResolver and handle lookups against hand-made servers on
 * 127.0.0.1 (a PLC directory, did:web hosts, a resolveHandle service, a DNS
 * server), for what the real PLC and PDS never do. The real cases are in
 * test/e2e/identity-head.test.ts.
 */
import { after, before, beforeEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ServerResponse } from 'node:http'
import { BodyTooLargeError } from '../../src/errors.ts'
import { DID_DOCUMENT_MAX_BYTES } from '../../src/identity/did-resolvers.ts'
import { BodyTooLargeError as HttpBodyTooLargeError } from '../../src/http/fetch.ts'
import { resolveHandleDns } from '../../src/identity/handle.ts'
import { AtprotoIdentityResolver, DEFAULT_CACHE_TTL_MS, DEFAULT_FAILURE_CACHE_TTL_MS } from '../../src/identity/resolver.ts'
import { didDocument, json, startPlc, startServer, testDid, testKey, type Handler, type TestServer } from '../helpers/fake-servers.ts'
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts'
import { startHttpsServer, type TestHttpsServer } from '../helpers/https-server.ts'

const DID = testDid('carol')
const KEY = testKey('carol')
const PDS = 'https://pds.example.test'

describe('AtprotoIdentityResolver with hand-made servers', () => {
  const docs = new Map<string, unknown>()
  let plc: TestServer
  let plcHandler: Handler | undefined
  let handles: TestServer
  const handleTable = new Map<string, string>()

  const resolver = (init: { timeoutMs?: number, allowHttpLocalhost?: boolean } = {}): AtprotoIdentityResolver => new AtprotoIdentityResolver({
    plcUrl: plc.url,
    handleResolverUrl: handles.url,
    timeoutMs: init.timeoutMs ?? 2000,
    allowHttpLocalhost: init.allowHttpLocalhost
  })

  before(async () => {
    plc = await startServer(async (req, res, url) => {
      if (plcHandler !== undefined) return await plcHandler(req, res, url)
      const doc = docs.get(decodeURIComponent(url.pathname.slice(1)))
      if (doc === undefined) json(res, 404, { message: 'DID not registered' })
      else json(res, 200, doc)
    })
    handles = await startServer((_req, res, url) => {
      const did = handleTable.get(url.searchParams.get('handle') ?? '')
      if (did === undefined) json(res, 400, { error: 'InvalidRequest', message: 'Unable to resolve handle' })
      else json(res, 200, { did })
    })
  })

  beforeEach(() => {
    docs.clear()
    handleTable.clear()
    plcHandler = undefined
    plc.requests.length = 0
    docs.set(DID, didDocument(DID, KEY, PDS, 'carol.example.com'))
    handleTable.set('carol.example.com', DID)
  })

  after(async () => {
    await plc?.close()
    await handles?.close()
  })

  it('resolves a DID with its handle verified through the resolveHandle service', async () => {
    const identity = await resolver().resolve(DID)
    assert.equal(identity.didKey, KEY.didKey)
    assert.equal(identity.pds, PDS)
    assert.equal(identity.handle, 'carol.example.com')
    assert.equal(identity.handleVerified, true)
  })

  it('a handle that points to another DID leaves the handle unverified', async () => {
    handleTable.set('carol.example.com', testDid('mallory'))
    const identity = await resolver().resolve(DID)
    assert.equal(identity.handle, 'carol.example.com')
    assert.equal(identity.handleVerified, false)
  })

  it('resolving a handle whose DID document claims another handle is HandleResolutionError', async () => {
    handleTable.set('impostor.example.com', DID)
    await assert.rejects(resolver().resolve('impostor.example.com'), (err: Error & { handle?: string, did?: string }) => {
      assert.equal(err.name, 'HandleResolutionError')
      assert.equal(err.handle, 'impostor.example.com')
      assert.equal(err.did, DID)
      assert.match(err.message, /claims carol\.example\.com instead/)
      return true
    })
  })

  it('resolving a handle whose DID document claims no handle is HandleResolutionError', async () => {
    docs.set(DID, didDocument(DID, KEY, PDS))
    await assert.rejects(resolver().resolve('carol.example.com'), { name: 'HandleResolutionError', message: /claims no handle/ })
  })

  it('a DID document without #atproto is DidDocumentError', async () => {
    docs.set(DID, didDocument(DID, undefined, PDS, 'carol.example.com'))
    await assert.rejects(resolver().resolve(DID), (err: Error & { did?: string }) => {
      assert.equal(err.name, 'DidDocumentError')
      assert.equal(err.did, DID)
      assert.match(err.message, /no #atproto verification method/)
      return true
    })
  })

  it('a DID document without #atproto_pds is DidDocumentError', async () => {
    docs.set(DID, { ...didDocument(DID, KEY, PDS), service: [] })
    await assert.rejects(resolver().resolve(DID), { name: 'DidDocumentError', message: /no #atproto_pds/ })
  })

  it('a directory answering 500 is DidResolutionError', async () => {
    plcHandler = (_req, res) => json(res, 500, { message: 'boom' })
    await assert.rejects(resolver().resolve(DID), (err: Error & { url?: string }) => {
      assert.equal(err.name, 'DidResolutionError')
      assert.match(err.message, /HTTP 500/)
      assert.equal(err.url, `${plc.url}/${DID}`)
      return true
    })
  })

  it('a directory answering HTML is DidResolutionError', async () => {
    plcHandler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' })
      res.end('<html>hello</html>')
    }
    await assert.rejects(resolver().resolve(DID), { name: 'DidResolutionError', message: /invalid JSON/ })
  })

  it('a directory answering the document of another DID is DidResolutionError', async () => {
    plcHandler = (_req, res) => json(res, 200, didDocument(testDid('dave'), KEY, PDS))
    await assert.rejects(resolver().resolve(DID), { name: 'DidResolutionError', message: /does not match/ })
  })

  it('a tombstoned DID (410) is DidNotFoundError', async () => {
    plcHandler = (_req, res) => json(res, 410, { message: 'DID not available' })
    await assert.rejects(resolver().resolve(DID), { name: 'DidNotFoundError', tombstoned: true })
  })

  it('a directory that never answers is DidResolutionError after the timeout', async () => {
    plcHandler = () => {}
    await assert.rejects(resolver({ timeoutMs: 200 }).resolve(DID), { name: 'DidResolutionError', message: /timed out/ })
  })

  it("the caller's signal firing while the directory hangs is rethrown as it is", async () => {
    plcHandler = () => {}
    await assert.rejects(resolver({ timeoutMs: 10_000 }).resolve(DID, { signal: AbortSignal.timeout(100) }), { name: 'TimeoutError' })
    // aborted once the request is at the directory, which never answers it
    const controller = new AbortController()
    plcHandler = () => { controller.abort() }
    await assert.rejects(resolver({ timeoutMs: 10_000 }).resolve(DID, { signal: controller.signal }), { name: 'AbortError' })
  })

  it('an oversized document is DidResolutionError', async () => {
    plcHandler = (_req, res) => json(res, 200, { ...didDocument(DID, KEY, PDS), padding: 'x'.repeat(300 * 1024) })
    await assert.rejects(resolver().resolve(DID), (err: Error) => {
      assert.equal(err.name, 'DidResolutionError')
      assert.match(err.message, /larger than 262144 bytes/)
      // The cause is errors.ts's BodyTooLargeError, still importable from http/fetch.ts.
      assert.ok(err.cause instanceof BodyTooLargeError)
      assert.ok(err.cause instanceof HttpBodyTooLargeError)
      assert.equal((err.cause as BodyTooLargeError).name, 'BodyTooLargeError')
      assert.equal((err.cause as BodyTooLargeError).limit, DID_DOCUMENT_MAX_BYTES)
      return true
    })
  })

  it('refresh() fetches again; resolve() reuses the cache', async () => {
    const r = resolver()
    const fetches = (): number => plc.requests.filter(path => path === `/${DID}`).length
    await r.resolve(DID)
    await r.resolve(DID)
    assert.equal(fetches(), 1)
    const rotated = testKey('carol-rotated')
    docs.set(DID, didDocument(DID, rotated, PDS, 'carol.example.com'))
    assert.equal((await r.resolve(DID)).didKey, KEY.didKey)
    assert.equal((await r.refresh(DID)).didKey, rotated.didKey)
    assert.equal((await r.resolve(DID)).didKey, rotated.didKey)
    assert.equal(fetches(), 2)
  })

  it('a cache entry expires after cacheTtlMs', async () => {
    let clock = 1_000_000
    const r = new AtprotoIdentityResolver({ plcUrl: plc.url, handleResolverUrl: handles.url, cacheTtlMs: 1000, now: () => clock })
    await r.resolve(DID, { verifyHandle: false })
    clock += 999
    await r.resolve(DID, { verifyHandle: false })
    assert.equal(plc.requests.length, 1)
    clock += 1
    await r.resolve(DID, { verifyHandle: false })
    assert.equal(plc.requests.length, 2)
  })

  it(`key material is reused for ${DEFAULT_CACHE_TTL_MS} ms by default, a handle's DID for longer`, async () => {
    let clock = 1_000_000
    const r = new AtprotoIdentityResolver({ plcUrl: plc.url, handleResolverUrl: handles.url, now: () => clock })
    const asked = handles.requests.length
    const lookups = (): number => handles.requests.length - asked
    await r.resolve('carol.example.com')
    assert.deepEqual([plc.requests.length, lookups()], [1, 1])
    clock += DEFAULT_CACHE_TTL_MS - 1
    await r.resolve('carol.example.com')
    assert.deepEqual([plc.requests.length, lookups()], [1, 1])
    clock += 1
    await r.resolve('carol.example.com')
    assert.deepEqual([plc.requests.length, lookups()], [2, 1])
  })

  it("resolving by handle does not stretch the document's window", async () => {
    let clock = 1_000_000
    const r = new AtprotoIdentityResolver({ plcUrl: plc.url, handleResolverUrl: handles.url, cacheTtlMs: 1000, now: () => clock })
    await r.resolve(DID, { verifyHandle: false })
    clock += 600
    await r.resolve('carol.example.com')
    clock += 400
    // 1000 ms after the document was fetched, whichever way it was asked for since
    await r.resolve(DID, { verifyHandle: false })
    assert.equal(plc.requests.length, 2)
  })

  it('a handle check that failed (resolver service down) is retried after the short failure TTL, the document is not refetched', async () => {
    let clock = 1_000_000
    let down = true
    const service = await startServer((_req, res, url) => {
      if (down) return json(res, 503, { error: 'ServiceUnavailable' })
      json(res, 200, { did: handleTable.get(url.searchParams.get('handle') ?? '') })
    })
    try {
      const r = new AtprotoIdentityResolver({ plcUrl: plc.url, handleResolverUrl: service.url, now: () => clock })
      assert.equal((await r.resolve(DID)).handleVerified, false)
      down = false
      clock += DEFAULT_FAILURE_CACHE_TTL_MS - 1
      assert.equal((await r.resolve(DID)).handleVerified, false)
      assert.equal(service.requests.length, 1)
      clock += 1
      assert.equal((await r.resolve(DID)).handleVerified, true)
      assert.equal(service.requests.length, 2)
      assert.equal(plc.requests.length, 1)
    } finally {
      await service.close()
    }
  })

  describe('did:web', () => {
    let host: TestServer
    let webDid: string

    before(async () => {
      host = await startServer((_req, res, url) => {
        if (url.pathname === '/.well-known/did.json') json(res, 200, didDocument(webDid, KEY, PDS, 'web.example.com'))
        else json(res, 404, {})
      })
      webDid = `did:web:localhost%3A${host.port}`
    })

    after(async () => { await host?.close() })

    it('resolves did:web:localhost over http when allowed', async () => {
      const identity = await resolver({ allowHttpLocalhost: true }).resolve(webDid, { verifyHandle: false })
      assert.equal(identity.pds, PDS)
      assert.equal(identity.did, webDid)
      assert.equal(identity.didKey, KEY.didKey)
      assert.deepEqual(host.requests, ['/.well-known/did.json'])
    })

    it('refuses did:web:localhost unless allowed', async () => {
      await assert.rejects(resolver().resolve(webDid), { name: 'InvalidIdentifierError', message: /only allowed in tests/ })
    })

    it('a did:web host without a document is DidNotFoundError', async () => {
      const missing = await startServer((_req, res) => json(res, 404, {}))
      try {
        await assert.rejects(resolver({ allowHttpLocalhost: true }).resolve(`did:web:localhost%3A${missing.port}`), { name: 'DidNotFoundError' })
      } finally {
        await missing.close()
      }
    })
  })
})

describe('handle lookup by DNS TXT', () => {
  let dns: TestDnsServer
  const did = testDid('erin')

  before(async () => {
    dns = await startDnsServer(new Map([
      ['_atproto.erin.example.com', [`did=${did}`]],
      ['_atproto.noise.example.com', ['v=spf1 -all', `did=${did}`]],
      ['_atproto.twice.example.com', [`did=${did}`, `did=${testDid('frank')}`]],
      ['_atproto.junk.example.com', ['did=not a did']],
      ['_atproto.empty.example.com', ['hello']]
    ]))
  })

  after(async () => { await dns?.close() })

  it('did= record', async () => {
    assert.deepEqual(await resolveHandleDns('erin.example.com', { dnsServers: [dns.server], timeoutMs: 2000 }), { did })
    assert.ok(dns.queries.includes('_atproto.erin.example.com'))
  })

  it('ignores TXT records that are not did=', async () => {
    assert.deepEqual(await resolveHandleDns('noise.example.com', { dnsServers: [dns.server], timeoutMs: 2000 }), { did })
  })

  it('no such name is "not found", not a failure', async () => {
    const result = await resolveHandleDns('nobody.example.com', { dnsServers: [dns.server], timeoutMs: 2000 })
    assert.equal(result.did, undefined)
    assert.equal((result as { failed: boolean }).failed, false)
  })

  it('TXT without did= is "not found"', async () => {
    const result = await resolveHandleDns('empty.example.com', { dnsServers: [dns.server], timeoutMs: 2000 })
    assert.equal(result.did, undefined)
  })

  it('two different DIDs is HandleResolutionError', async () => {
    await assert.rejects(resolveHandleDns('twice.example.com', { dnsServers: [dns.server], timeoutMs: 2000 }), { name: 'HandleResolutionError', message: /2 different DIDs/ })
  })

  it('a did= value that is not a DID is HandleResolutionError', async () => {
    await assert.rejects(resolveHandleDns('junk.example.com', { dnsServers: [dns.server], timeoutMs: 2000 }), { name: 'HandleResolutionError' })
  })
})

describe('AtprotoIdentityResolver by DNS and HTTPS (no resolver service), checked both ways', () => {
  const DAVE = testDid('dave')
  const ERIN = testDid('erin')
  const FRANK = testDid('frank')
  const GRACE = testDid('grace')
  const HEIDI = testDid('heidi')
  const KEY = testKey('dave')
  const docs = new Map<string, unknown>()
  const records = new Map<string, string[]>()
  const wellKnown = new Map<string, (res: ServerResponse) => void>()
  let plc: TestServer
  let dns: TestDnsServer
  let https: TestHttpsServer
  let clock = 1_000_000

  const resolver = (): AtprotoIdentityResolver => new AtprotoIdentityResolver({
    plcUrl: plc.url,
    dnsServers: [dns.server],
    fetch: https.fetch,
    timeoutMs: 300,
    now: () => clock
  })
  const plcFetches = (did: string): number => plc.requests.filter(path => path === `/${did}`).length
  const dnsQueries = (handle: string): number => dns.queries.filter(q => q === `_atproto.${handle}`).length
  const text = (res: ServerResponse, status: number, body: string): void => {
    res.writeHead(status, { 'content-type': 'text/plain' })
    res.end(body)
  }

  before(async () => {
    plc = await startPlc(docs)
    dns = await startDnsServer(records, { silent: new Set(['_atproto.grace.example.com']) })
    https = await startHttpsServer(['*.example.com'], (req, res, host) => {
      const answer = req.url === '/.well-known/atproto-did' ? wellKnown.get(host) : undefined
      if (answer === undefined) text(res, 404, 'not found')
      else answer(res)
    })
  })

  beforeEach(() => {
    clock = 1_000_000
    plc.requests.length = 0
    dns.queries.length = 0
    docs.clear()
    records.clear()
    wellKnown.clear()
    docs.set(DAVE, didDocument(DAVE, KEY, PDS, 'dave.example.com'))
    docs.set(ERIN, didDocument(ERIN, KEY, PDS, 'erin.example.com'))
    docs.set(FRANK, didDocument(FRANK, KEY, PDS, 'frank.example.com'))
    docs.set(GRACE, didDocument(GRACE, KEY, PDS, 'grace.example.com'))
    docs.set(HEIDI, didDocument(HEIDI, KEY, PDS, 'heidi.example.com'))
    records.set('_atproto.dave.example.com', [`did=${DAVE}`])
    records.set('_atproto.liar.example.com', [`did=${DAVE}`])
    records.set('_atproto.frank.example.com', [`did=${DAVE}`])
    wellKnown.set('erin.example.com', res => { text(res, 200, ERIN) })
    wellKnown.set('grace.example.com', res => { text(res, 500, 'boom') })
  })

  after(async () => {
    await plc?.close()
    await dns?.close()
    await https?.close()
  })

  it('a handle by DNS: DID, then its document claims the handle back', async () => {
    const identity = await resolver().resolve('Dave.Example.com')
    assert.equal(identity.did, DAVE)
    assert.equal(identity.handle, 'dave.example.com')
    assert.equal(identity.handleVerified, true)
    assert.equal(identity.didKey, KEY.didKey)
    assert.ok(dnsQueries('dave.example.com') > 0)
  })

  it('a handle by HTTPS well-known only', async () => {
    const identity = await resolver().resolve('erin.example.com')
    assert.equal(identity.did, ERIN)
    assert.equal(identity.handleVerified, true)
    assert.ok(https.requests.some(r => r.host === 'erin.example.com' && r.path === '/.well-known/atproto-did'))
  })

  it('a DID: its handle is looked up by DNS and verified', async () => {
    const identity = await resolver().resolve(DAVE)
    assert.equal(identity.handle, 'dave.example.com')
    assert.equal(identity.handleVerified, true)
  })

  it('a handle whose DID document does not name it back is HandleResolutionError', async () => {
    await assert.rejects(resolver().resolve('liar.example.com'), (err: Error & { handle?: string, did?: string }) => {
      assert.equal(err.name, 'HandleResolutionError')
      assert.equal(err.handle, 'liar.example.com')
      assert.equal(err.did, DAVE)
      assert.match(err.message, /claims dave\.example\.com instead/)
      return true
    })
  })

  it('a handle the document names only after its primary handle is not verified (the spec ignores later entries)', async () => {
    docs.set(DAVE, { ...didDocument(DAVE, KEY, PDS), alsoKnownAs: ['at://dave.example.com', 'at://liar.example.com'] })
    await assert.rejects(resolver().resolve('liar.example.com'), { name: 'HandleResolutionError', message: /claims dave\.example\.com instead/ })
  })

  it('a DID whose handle points to another DID: handle reported, not verified', async () => {
    const identity = await resolver().resolve(FRANK)
    assert.equal(identity.handle, 'frank.example.com')
    assert.equal(identity.handleVerified, false)
  })

  it('a reserved-TLD handle is refused without a lookup', async () => {
    await assert.rejects(resolver().resolve('dave.example'), { name: 'HandleNotFoundError', message: /reserved TLD/ })
    assert.equal(dnsQueries('dave.example'), 0)
  })

  it(`a failed handle lookup (DNS timeout, well-known 500) is cached for ${DEFAULT_FAILURE_CACHE_TTL_MS} ms only`, async () => {
    const r = resolver()
    const first = await r.resolve(GRACE)
    assert.equal(first.handle, 'grace.example.com')
    assert.equal(first.handleVerified, false)
    const queries = dnsQueries('grace.example.com')
    assert.ok(queries > 0)
    // The well-known endpoint recovers.
    wellKnown.set('grace.example.com', res => { text(res, 200, GRACE) })
    clock += DEFAULT_FAILURE_CACHE_TTL_MS - 1
    assert.equal((await r.resolve(GRACE)).handleVerified, false)
    assert.equal(dnsQueries('grace.example.com'), queries)
    clock += 1
    assert.equal((await r.resolve(GRACE)).handleVerified, true)
    assert.ok(dnsQueries('grace.example.com') > queries)
    // Only the handle was checked again: the document came from the cache.
    assert.equal(plcFetches(GRACE), 1)
  })

  it('a handle that resolves to no DID is an answer: cached for the full TTL', async () => {
    const r = resolver()
    assert.equal((await r.resolve(HEIDI)).handleVerified, false)
    const queries = dnsQueries('heidi.example.com')
    records.set('_atproto.heidi.example.com', [`did=${HEIDI}`])
    clock += DEFAULT_FAILURE_CACHE_TTL_MS + 1
    assert.equal((await r.resolve(HEIDI)).handleVerified, false)
    assert.equal(dnsQueries('heidi.example.com'), queries)
    clock += 600_000
    assert.equal((await r.resolve(HEIDI)).handleVerified, true)
    assert.equal(plcFetches(HEIDI), 2)
  })

  it('verifyHandle: false never looks the handle up', async () => {
    const identity = await resolver().resolve(DAVE, { verifyHandle: false })
    assert.equal(identity.handleVerified, false)
    assert.equal(dnsQueries('dave.example.com'), 0)
  })
})
