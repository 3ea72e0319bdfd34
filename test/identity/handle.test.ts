/**
 * Handle → DID by DNS TXT and by HTTPS well-known, against a real DNS server and a
 * real HTTPS server on 127.0.0.1 (test/helpers/dns-server.ts, https-server.ts):
 * each method alone, the two together (DNS wins, the other lookup is aborted),
 * both failing, timeouts and the caller's abort.
 */
import { after, before, beforeEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ServerResponse } from 'node:http'
import { resolveHandleDirect, resolveHandleDns, resolveHandleHttps, type HandleLookupOptions } from '../../src/identity/handle.ts'
import { testDid } from '../helpers/fake-servers.ts'
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts'
import { startHttpsServer, type TestHttpsServer } from '../helpers/https-server.ts'
import { until } from '../helpers/until.ts'

const ALICE = testDid('alice')
const BOB = testDid('bob')

function text (res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'text/plain' })
  res.end(body)
}

describe('handle lookups by DNS and HTTPS', () => {
  let dns: TestDnsServer
  let https: TestHttpsServer
  /** host → what its well-known endpoint does; unknown hosts answer 404. */
  const wellKnown = new Map<string, (res: ServerResponse) => void>()
  /** DNS names answered only once their function's promise settles. */
  const hold = new Map<string, () => Promise<void>>()

  const lookup = (init: HandleLookupOptions = {}): HandleLookupOptions => ({ dnsServers: [dns.server], fetch: https.fetch, timeoutMs: 2000, ...init })
  const httpsRequests = (host: string): number => https.requests.filter(r => r.host === host).length
  const dnsQueries = (handle: string): number => dns.queries.filter(q => q === `_atproto.${handle}`).length

  before(async () => {
    dns = await startDnsServer(new Map([
      ['_atproto.dns.example.test', [`did=${ALICE}`]],
      ['_atproto.both.example.test', [`did=${ALICE}`]],
      ['_atproto.conflict.example.test', [`did=${ALICE}`]],
      ['_atproto.slowweb.example.test', [`did=${ALICE}`]]
    ]), { silent: new Set(['_atproto.dnsdown.example.test', '_atproto.alldown.example.test', '_atproto.hang.example.test']), hold })
    https = await startHttpsServer(['*.example.test'], (req, res, host) => {
      const answer = req.url === '/.well-known/atproto-did' ? wellKnown.get(host) : undefined
      if (answer === undefined) text(res, 404, 'not found')
      else answer(res)
    })
  })

  beforeEach(() => {
    hold.clear()
    wellKnown.clear()
    wellKnown.set('web.example.test', res => { text(res, 200, `${BOB}\n`) })
    wellKnown.set('both.example.test', res => { text(res, 200, ALICE) })
    wellKnown.set('conflict.example.test', res => { text(res, 200, BOB) })
    wellKnown.set('slowweb.example.test', () => {})
    wellKnown.set('dnsdown.example.test', res => { text(res, 200, BOB) })
    wellKnown.set('alldown.example.test', res => { text(res, 500, 'boom') })
    wellKnown.set('webhang.example.test', () => {})
    wellKnown.set('junk.example.test', res => { text(res, 200, '<html>hello</html>') })
  })

  after(async () => {
    await dns?.close()
    await https?.close()
  })

  describe('resolveHandleHttps', () => {
    it('reads the DID from /.well-known/atproto-did, trimming whitespace', async () => {
      assert.deepEqual(await resolveHandleHttps('web.example.test', lookup()), { did: BOB })
      assert.deepEqual(https.requests.at(-1), { host: 'web.example.test', path: '/.well-known/atproto-did', closed: true })
    })

    it('a 404 is "not found", not a failure', async () => {
      const result = await resolveHandleHttps('nothing.example.test', lookup())
      assert.deepEqual(result, { failed: false, reason: 'HTTP 404' })
    })

    it('a 5xx is a failure', async () => {
      assert.deepEqual(await resolveHandleHttps('alldown.example.test', lookup()), { failed: true, reason: 'HTTP 500' })
    })

    it('a body that is not a DID is HandleResolutionError naming the URL', async () => {
      await assert.rejects(resolveHandleHttps('junk.example.test', lookup()), (err: Error & { handle?: string, url?: string }) => {
        assert.equal(err.name, 'HandleResolutionError')
        assert.equal(err.handle, 'junk.example.test')
        assert.equal(err.url, 'https://junk.example.test/.well-known/atproto-did')
        return true
      })
    })

    it('a certificate that does not name the host is "not found" (a failed TLS handshake proves nothing)', async () => {
      const result = await resolveHandleHttps('web.other.test', lookup())
      assert.equal(result.did, undefined)
      assert.equal((result as { failed: boolean }).failed, false)
      assert.match((result as { reason: string }).reason, /ERR_TLS_CERT_ALTNAME_INVALID/)
      assert.equal(httpsRequests('web.other.test'), 0)
    })

    it('a server that never answers times out: a failure', async () => {
      const result = await resolveHandleHttps('webhang.example.test', lookup({ timeoutMs: 200 }))
      assert.deepEqual(result, { failed: true, reason: 'timed out' })
      await until('the hanging request to be closed', () => https.requests.filter(r => r.host === 'webhang.example.test').every(r => r.closed))
    })

    it("the caller's abort is rethrown as it is", async () => {
      const controller = new AbortController()
      const asked = https.requests.length
      const resolving = assert.rejects(resolveHandleHttps('webhang.example.test', lookup({ timeoutMs: 10_000, signal: controller.signal })), { name: 'AbortError' })
      await until('the request to hang at the server', () => https.requests.slice(asked).some(r => r.host === 'webhang.example.test'))
      controller.abort()
      await resolving
    })
  })

  describe('resolveHandleDns timeouts', () => {
    it('a DNS server that never answers is a failure after timeoutMs', async () => {
      const started = Date.now()
      assert.deepEqual(await resolveHandleDns('hang.example.test', lookup({ timeoutMs: 200 })), { failed: true, reason: 'DNS timed out' })
      assert.ok(Date.now() - started < 1500)
    })

    it("the caller's abort during a DNS lookup is rethrown as it is", async () => {
      const controller = new AbortController()
      const asked = dnsQueries('hang.example.test')
      const resolving = assert.rejects(resolveHandleDns('hang.example.test', lookup({ timeoutMs: 10_000, signal: controller.signal })), { name: 'AbortError' })
      await until('the query to reach the silent server', () => dnsQueries('hang.example.test') > asked)
      controller.abort()
      await resolving
    })
  })

  describe('resolveHandleDirect', () => {
    it('DNS only', async () => {
      assert.equal(await resolveHandleDirect('dns.example.test', lookup()), ALICE)
    })

    it('well-known only (no TXT record)', async () => {
      assert.equal(await resolveHandleDirect('web.example.test', lookup()), BOB)
      assert.ok(dnsQueries('web.example.test') > 0)
      assert.ok(httpsRequests('web.example.test') > 0)
    })

    it('both agree', async () => {
      assert.equal(await resolveHandleDirect('both.example.test', lookup()), ALICE)
    })

    it('DNS wins over a conflicting well-known answer', async () => {
      assert.equal(await resolveHandleDirect('conflict.example.test', lookup()), ALICE)
    })

    it('DNS wins while the well-known lookup hangs, and that lookup is aborted', async () => {
      // DNS answers only once the well-known request has reached the server (which never answers it).
      let arrived!: () => void
      const requested = new Promise<void>(resolve => { arrived = resolve })
      wellKnown.set('slowweb.example.test', () => { arrived() })
      hold.set('_atproto.slowweb.example.test', async () => await requested)
      const started = Date.now()
      assert.equal(await resolveHandleDirect('slowweb.example.test', lookup({ timeoutMs: 10_000 })), ALICE)
      assert.ok(Date.now() - started < 5000)
      const pending = https.requests.filter(r => r.host === 'slowweb.example.test')
      assert.equal(pending.length, 1)
      // The server sees the hanging request's connection close, long before its 10 s timeout.
      await until('the losing lookup to be closed', () => pending[0]?.closed === true)
    })

    it('DNS timing out, well-known answering: the well-known DID', async () => {
      assert.equal(await resolveHandleDirect('dnsdown.example.test', lookup({ timeoutMs: 300 })), BOB)
    })

    it('neither names a DID: HandleNotFoundError with both reasons', async () => {
      await assert.rejects(resolveHandleDirect('nobody.example.test', lookup()), (err: Error & { handle?: string }) => {
        assert.equal(err.name, 'HandleNotFoundError')
        assert.equal(err.handle, 'nobody.example.test')
        assert.match(err.message, /dns: no TXT record \(ENOTFOUND\); https: HTTP 404/)
        return true
      })
    })

    it('both fail (DNS times out, well-known 500): HandleResolutionError listing each reason', async () => {
      await assert.rejects(resolveHandleDirect('alldown.example.test', lookup({ timeoutMs: 300 })), (err: Error & { handle?: string, reasons?: unknown }) => {
        assert.equal(err.name, 'HandleResolutionError')
        assert.equal(err.handle, 'alldown.example.test')
        assert.deepEqual(err.reasons, [{ source: 'dns', reason: 'DNS timed out' }, { source: 'https', reason: 'HTTP 500' }])
        assert.match(err.message, /dns: DNS timed out; https: HTTP 500/)
        return true
      })
    })

    it('no TXT record and a well-known that never answers: HandleResolutionError after the timeout', async () => {
      await assert.rejects(resolveHandleDirect('webhang.example.test', lookup({ timeoutMs: 300 })), (err: Error & { reasons?: Array<{ source: string, reason: string }> }) => {
        assert.equal(err.name, 'HandleResolutionError')
        assert.deepEqual(err.reasons?.map(r => r.source), ['dns', 'https'])
        assert.equal(err.reasons?.[1]?.reason, 'timed out')
        return true
      })
    })

    it("the caller's abort is rethrown as it is, and the well-known request is dropped", async () => {
      // DNS never answers; the caller gives up once the well-known request is in (never answered either).
      const controller = new AbortController()
      wellKnown.set('hang.example.test', () => { controller.abort() })
      await assert.rejects(resolveHandleDirect('hang.example.test', lookup({ timeoutMs: 10_000, signal: controller.signal })), { name: 'AbortError' })
      const pending = https.requests.filter(r => r.host === 'hang.example.test')
      assert.equal(pending.length, 1)
      await until('the losing lookup to be closed', () => pending[0]?.closed === true)
    })

    for (const tld of ['example', 'local', 'localhost', 'arpa', 'onion', 'internal']) {
      it(`a handle under the reserved .${tld} is refused without any lookup`, async () => {
        const handle = `alice.${tld}`
        const requestsBefore = https.requests.length
        await assert.rejects(resolveHandleDirect(handle, lookup()), (err: Error & { handle?: string }) => {
          assert.equal(err.name, 'HandleNotFoundError')
          assert.equal(err.handle, handle)
          assert.match(err.message, new RegExp(`\\.${tld} is a reserved TLD`))
          return true
        })
        assert.equal(dnsQueries(handle), 0)
        assert.equal(https.requests.length, requestsBefore)
      })
    }
  })
})
