/**
 * PdsHeadResolver against hand-made servers on 127.0.0.1, for what a real PDS
 * never does. The real-PDS cases are in test/e2e/identity-head.test.ts.
 */
import { after, before, beforeEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ServerResponse } from 'node:http'
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { car, carOf, didDocument, json, signedCommit, startPlc, startServer, testDid, testKey, type Handler, type TestCommit, type TestServer } from '../helpers/fake-servers.ts'

const DID = testDid('alice')
const KEY = testKey('alice')
const OTHER_KEY = testKey('mallory')

describe('PdsHeadResolver with hand-made servers', () => {
  const docs = new Map<string, unknown>()
  let plc: TestServer
  let pds: TestServer
  let handler: Handler
  let commit: TestCommit

  // The hand-made PDS is plain http on localhost: a local test network.
  const heads = (timeoutMs = 2000): PdsHeadResolver => new PdsHeadResolver(
    { identity: new AtprotoIdentityResolver({ plcUrl: plc.url, timeoutMs, allowHttpLocalhost: true }) },
    { timeoutMs }
  )

  /**
   * An old PDS that implements only the deprecated getHead (every other method is
   * 501 MethodNotImplemented, as an XRPC server answers), with `heads` as its repos.
   */
  const getHeadOnly = (served: Map<string, TestCommit>): Handler => (_req, res, url) => {
    if (url.pathname === '/xrpc/com.atproto.sync.getHead') {
      const did = url.searchParams.get('did') ?? ''
      const head = served.get(did)
      if (head === undefined) return json(res, 400, { error: 'HeadNotFound', message: `Could not find root for DID: ${did}` })
      return json(res, 200, { root: head.cid.toString() })
    }
    if (url.pathname === '/xrpc/com.atproto.sync.getBlocks') {
      const head = served.get(url.searchParams.get('did') ?? '')
      if (head !== undefined) return car(res, carOf([head]))
    }
    json(res, 501, { error: 'MethodNotImplemented', message: `${url.pathname} not implemented` })
  }

  /** A well-behaved PDS serving `served` (getLatestCommit + getBlocks). */
  const wellBehaved = (served: TestCommit, overrides: { latest?: (res: ServerResponse) => void, blocks?: (res: ServerResponse) => void } = {}): Handler => (_req, res, url) => {
    if (url.pathname === '/xrpc/com.atproto.sync.getLatestCommit') {
      if (overrides.latest !== undefined) return overrides.latest(res)
      return json(res, 200, { cid: served.cid.toString(), rev: served.rev })
    }
    if (url.pathname === '/xrpc/com.atproto.sync.getBlocks') {
      if (overrides.blocks !== undefined) return overrides.blocks(res)
      assert.deepEqual(url.searchParams.getAll('cids'), [served.cid.toString()])
      assert.equal(url.searchParams.get('did'), DID)
      return car(res, carOf([served]))
    }
    json(res, 404, { error: 'MethodNotImplemented', message: `no ${url.pathname}` })
  }

  before(async () => {
    plc = await startPlc(docs)
    pds = await startServer(async (req, res, url) => { await handler(req, res, url) })
  })

  beforeEach(() => {
    docs.clear()
    docs.set(DID, didDocument(DID, KEY, pds.localhostUrl))
    commit = signedCommit(DID, KEY)
    handler = wellBehaved(commit)
    pds.requests.length = 0
    plc.requests.length = 0
  })

  after(async () => {
    await pds?.close()
    await plc?.close()
  })

  it('returns the verified head', async () => {
    const head = await heads().resolveHead(DID)
    assert.equal(head.did, DID)
    assert.ok(head.cid.equals(commit.cid))
    assert.equal(head.rev, commit.rev)
    assert.ok(head.data.equals(commit.data))
    assert.ok(Buffer.from(head.bytes).equals(commit.bytes))
    assert.equal(head.source, `pds:${pds.localhostUrl}`)
  })

  it('verifies a P-256 signing key too', async () => {
    const key = testKey('alice-p256', 'p256')
    docs.set(DID, didDocument(DID, key, pds.localhostUrl))
    commit = signedCommit(DID, key)
    handler = wellBehaved(commit)
    assert.ok((await heads().resolveHead(DID)).cid.equals(commit.cid))
  })

  it('a commit signed by the wrong key is CommitSignatureError, after one identity refresh', async () => {
    commit = signedCommit(DID, OTHER_KEY)
    handler = wellBehaved(commit)
    await assert.rejects(heads().resolveHead(DID), (err: Error & { did?: string, cid?: string, rev?: string }) => {
      assert.equal(err.name, 'CommitSignatureError')
      assert.equal(err.did, DID)
      assert.equal(err.cid, commit.cid.toString())
      assert.equal(err.rev, commit.rev)
      return true
    })
    assert.equal(plc.requests.filter(path => path === `/${DID}`).length, 2)
  })

  it('a key rotated in the directory is picked up by the refresh', async () => {
    const resolver = heads()
    await resolver.resolveHead(DID)
    const rotated = testKey('alice-rotated')
    docs.set(DID, didDocument(DID, rotated, pds.localhostUrl))
    commit = signedCommit(DID, rotated, '3l3qo2vutsw2c')
    handler = wellBehaved(commit)
    assert.equal((await resolver.resolveHead(DID)).rev, '3l3qo2vutsw2c')
  })

  it('getLatestCommit not implemented (501 MethodNotImplemented): falls back to getHead', async () => {
    handler = (req, res, url) => {
      if (url.pathname === '/xrpc/com.atproto.sync.getLatestCommit') return json(res, 501, { error: 'MethodNotImplemented', message: 'not here' })
      if (url.pathname === '/xrpc/com.atproto.sync.getHead') return json(res, 200, { root: commit.cid.toString() })
      return wellBehaved(commit)(req, res, url)
    }
    const head = await heads().resolveHead(DID)
    assert.ok(head.cid.equals(commit.cid))
    assert.equal(head.rev, commit.rev)
    assert.deepEqual(pds.requests.map(path => path.split('?')[0]), ['/xrpc/com.atproto.sync.getLatestCommit', '/xrpc/com.atproto.sync.getHead', '/xrpc/com.atproto.sync.getBlocks'])
  })

  it('getLatestCommit unknown (plain 404, no XRPC error): falls back to getHead', async () => {
    handler = (req, res, url) => {
      if (url.pathname === '/xrpc/com.atproto.sync.getLatestCommit') {
        res.writeHead(404, { 'content-type': 'text/html' })
        res.end('<pre>Cannot GET</pre>')
        return
      }
      if (url.pathname === '/xrpc/com.atproto.sync.getHead') return json(res, 200, { root: commit.cid.toString() })
      return wellBehaved(commit)(req, res, url)
    }
    assert.ok((await heads().resolveHead(DID)).cid.equals(commit.cid))
  })

  it('neither getLatestCommit nor getHead is MethodNotImplementedError', async () => {
    handler = (_req, res) => json(res, 501, { error: 'MethodNotImplemented' })
    await assert.rejects(heads().resolveHead(DID), { name: 'MethodNotImplementedError' })
  })

  it('a PDS that never answers is PdsUnavailableError after the timeout', async () => {
    handler = () => {}
    const started = Date.now()
    await assert.rejects(heads(300).resolveHead(DID), (err: Error & { url?: string }) => {
      assert.equal(err.name, 'PdsUnavailableError')
      assert.match(err.message, /timed out/)
      assert.match(err.url ?? '', /getLatestCommit/)
      return true
    })
    assert.ok(Date.now() - started < 2000)
  })

  it('the caller aborting while the PDS hangs is an AbortError', async () => {
    // aborted once the request is at the PDS, which never answers it
    const controller = new AbortController()
    handler = () => { controller.abort() }
    await assert.rejects(heads(10_000).resolveHead(DID, { signal: controller.signal }), { name: 'AbortError' })
  })

  it('a PDS answering HTML is PdsResponseError', async () => {
    handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' })
      res.end('<html><body>Welcome to nginx!</body></html>')
    }
    await assert.rejects(heads().resolveHead(DID), (err: Error) => {
      assert.equal(err.name, 'PdsResponseError')
      assert.match(err.message, /expected JSON, got "text\/html"/)
      return true
    })
  })

  it('invalid JSON is PdsResponseError', async () => {
    handler = wellBehaved(commit, {
      latest: res => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end('{"cid": ')
      }
    })
    await assert.rejects(heads().resolveHead(DID), { name: 'PdsResponseError', message: /invalid JSON/ })
  })

  it('a cid that is not a CID is PdsResponseError', async () => {
    handler = wellBehaved(commit, { latest: res => json(res, 200, { cid: 'not-a-cid', rev: commit.rev }) })
    await assert.rejects(heads().resolveHead(DID), { name: 'PdsResponseError', message: /not a repo CID/ })
  })

  it('a rev that is not a TID is PdsResponseError', async () => {
    handler = wellBehaved(commit, { latest: res => json(res, 200, { cid: commit.cid.toString(), rev: 'yesterday' }) })
    await assert.rejects(heads().resolveHead(DID), { name: 'PdsResponseError', message: /not a TID/ })
  })

  it('a rev that differs from the commit is PdsResponseError', async () => {
    handler = wellBehaved(commit, { latest: res => json(res, 200, { cid: commit.cid.toString(), rev: '3l3qo2vutsw2z' }) })
    await assert.rejects(heads().resolveHead(DID), { name: 'PdsResponseError', message: /rev 3l3qo2vutsw2z but the commit has rev/ })
  })

  it('a CAR that is not a CAR is PdsResponseError', async () => {
    handler = wellBehaved(commit, { blocks: res => car(res, new TextEncoder().encode('<html>nope</html>')) })
    await assert.rejects(heads().resolveHead(DID), { name: 'PdsResponseError', message: /bad CAR/ })
  })

  it('a block whose bytes do not hash to its CID is PdsResponseError', async () => {
    const tampered = { cid: commit.cid, bytes: Uint8Array.from(commit.bytes, (b, i) => i === commit.bytes.length - 1 ? b ^ 1 : b) }
    handler = wellBehaved(commit, { blocks: res => car(res, carOf([tampered])) })
    await assert.rejects(heads().resolveHead(DID), (err: Error) => {
      assert.equal(err.name, 'PdsResponseError')
      assert.equal((err.cause as Error).name, 'CidMismatchError')
      return true
    })
  })

  it('a CAR without the commit is PdsBlockNotFoundError', async () => {
    handler = wellBehaved(commit, { blocks: res => car(res, carOf([signedCommit(DID, KEY, '3l3qo2vutsw2d')])) })
    await assert.rejects(heads().resolveHead(DID), { name: 'PdsBlockNotFoundError' })
  })

  it('getBlocks answering BlockNotFound is PdsBlockNotFoundError', async () => {
    handler = wellBehaved(commit, { blocks: res => json(res, 400, { error: 'BlockNotFound', message: 'Could not find cids' }) })
    await assert.rejects(heads().resolveHead(DID), { name: 'PdsBlockNotFoundError' })
  })

  it("a commit of another DID is CommitDidMismatchError", async () => {
    commit = signedCommit(testDid('bob'), KEY)
    handler = wellBehaved(commit)
    await assert.rejects(heads().resolveHead(DID), (err: Error & { did?: string, actual?: string }) => {
      assert.equal(err.name, 'CommitDidMismatchError')
      assert.equal(err.did, DID)
      assert.equal(err.actual, testDid('bob'))
      return true
    })
  })

  it('a 5xx is PdsUnavailableError', async () => {
    handler = (_req, res) => json(res, 503, { error: 'ServiceUnavailable' })
    await assert.rejects(heads().resolveHead(DID), (err: Error & { status?: number }) => {
      assert.equal(err.name, 'PdsUnavailableError')
      assert.equal(err.status, 503)
      return true
    })
  })

  for (const [error, name] of [['RepoSuspended', 'RepoSuspendedError'], ['RepoTakendown', 'RepoTakendownError'], ['RepoNotFound', 'RepoNotFoundError'], ['RepoDeactivated', 'RepoDeactivatedError']] as const) {
    it(`XRPC ${error} is ${name}`, async () => {
      handler = (_req, res) => json(res, 400, { error, message: `${error}: ${DID}` })
      await assert.rejects(heads().resolveHead(DID), (err: Error & { did?: string }) => {
        assert.equal(err.name, name)
        assert.equal(err.did, DID)
        return true
      })
    })
  }

  /**
   * The identity caches the old PDS (answering with `oldPds`); then the directory
   * names a new PDS (`newPds`): the head comes from the new one after one refresh,
   * and the old one saw exactly `oldRequests`.
   */
  async function headAfterMove (oldPds: Handler, newPdsHandler: Handler, oldRequests: string[]): Promise<void> {
    const newPds = await startServer(newPdsHandler)
    try {
      handler = oldPds
      const identity = new AtprotoIdentityResolver({ plcUrl: plc.url, allowHttpLocalhost: true })
      await identity.resolve(DID)
      docs.set(DID, didDocument(DID, KEY, newPds.localhostUrl))
      const head = await new PdsHeadResolver({ identity }).resolveHead(DID)
      assert.equal(head.source, `pds:${newPds.localhostUrl}`)
      assert.ok(head.cid.equals(commit.cid))
      // the head carries the refreshed identity, the one its caller must sync with
      assert.equal(head.identity.pds, newPds.localhostUrl)
      assert.deepEqual(pds.requests.map(path => path.split('?')[0]), oldRequests)
    } finally {
      await newPds.close()
    }
  }

  it('an account that moved: RepoNotFound at the old PDS, head from the new PDS named by the refreshed document', async () => {
    await headAfterMove((_req, res) => json(res, 400, { error: 'RepoNotFound', message: 'gone' }), wellBehaved(commit), ['/xrpc/com.atproto.sync.getLatestCommit'])
  })

  it('an account that moved: RepoTakendown at the old PDS is not its status; the head comes from the new PDS', async () => {
    await headAfterMove((_req, res) => json(res, 400, { error: 'RepoTakendown', message: 'taken down here' }), wellBehaved(commit), ['/xrpc/com.atproto.sync.getLatestCommit'])
  })

  it('a status the directory cannot confirm is not reported: the directory\'s error is', async () => {
    handler = (_req, res) => json(res, 400, { error: 'RepoTakendown', message: 'taken down' })
    const identity = new AtprotoIdentityResolver({ plcUrl: plc.url, allowHttpLocalhost: true })
    const resolved = await identity.resolve(DID, { verifyHandle: false })
    docs.delete(DID)
    await assert.rejects(new PdsHeadResolver({ identity }).resolveHead(DID, { identity: resolved }), { name: 'DidNotFoundError', tombstoned: false })
  })

  it("the caller's identity is used as given: no lookup, and the head carries it", async () => {
    const identity = new AtprotoIdentityResolver({ plcUrl: plc.url, allowHttpLocalhost: true })
    const resolved = await identity.resolve(DID, { verifyHandle: false })
    plc.requests.length = 0
    const head = await new PdsHeadResolver({ identity }).resolveHead(DID, { identity: resolved })
    assert.equal(head.identity, resolved)
    assert.deepEqual(plc.requests, [])
  })

  it('after a rotation the head carries the refreshed identity, not the one it was given', async () => {
    const identity = new AtprotoIdentityResolver({ plcUrl: plc.url, allowHttpLocalhost: true })
    const resolved = await identity.resolve(DID, { verifyHandle: false })
    const rotated = testKey('alice-rotated')
    docs.set(DID, didDocument(DID, rotated, pds.localhostUrl))
    commit = signedCommit(DID, rotated)
    handler = wellBehaved(commit)
    const head = await new PdsHeadResolver({ identity }).resolveHead(DID, { identity: resolved })
    assert.equal(head.identity.didKey, rotated.didKey)
    assert.notEqual(resolved.didKey, rotated.didKey)
  })
  it('a getHead-only PDS serves the head (getLatestCommit is 501)', async () => {
    handler = getHeadOnly(new Map([[DID, commit]]))
    const head = await heads().resolveHead(DID)
    assert.ok(head.cid.equals(commit.cid))
    assert.ok(head.data.equals(commit.data))
    assert.deepEqual(pds.requests.map(path => path.split('?')[0]), ['/xrpc/com.atproto.sync.getLatestCommit', '/xrpc/com.atproto.sync.getHead', '/xrpc/com.atproto.sync.getBlocks'])
  })

  it("getHead's HeadNotFound is RepoNotFoundError", async () => {
    handler = getHeadOnly(new Map())
    await assert.rejects(heads().resolveHead(DID), (err: Error & { did?: string, status?: number, url?: string }) => {
      assert.equal(err.name, 'RepoNotFoundError')
      assert.equal(err.did, DID)
      assert.equal(err.status, 400)
      assert.match(err.message, /getHead: HeadNotFound/)
      assert.match(err.url ?? '', /getHead/)
      return true
    })
    // Not found here, and the directory still names this PDS: one refresh, no second try.
    assert.equal(plc.requests.filter(path => path === `/${DID}`).length, 2)
    assert.equal(pds.requests.filter(path => path.startsWith('/xrpc/com.atproto.sync.getHead')).length, 1)
  })

  it('an account that moved off a getHead-only PDS: HeadNotFound there, head from the new PDS', async () => {
    await headAfterMove(getHeadOnly(new Map()), getHeadOnly(new Map([[DID, commit]])), ['/xrpc/com.atproto.sync.getLatestCommit', '/xrpc/com.atproto.sync.getHead'])
  })
})
