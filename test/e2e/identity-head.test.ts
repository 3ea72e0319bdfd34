import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { CarReader } from '@ipld/car'
import * as dagCbor from '@ipld/dag-cbor'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { CompositeHeadResolver } from '../../src/head/composite-head-resolver.ts'
import type { HeadResolver } from '../../src/head/head-resolver.ts'
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { peerIdForDid, peerIdForKey } from '../../src/identity/peer-id.ts'
import { rendezvousCid } from '../../src/identity/rendezvous.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { verifyCommitSignature } from '../../src/repo/commit.ts'
import { parseDidKey } from '../../src/repo/keys.ts'
import { json, startServer } from '../helpers/fake-servers.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../../support/network.ts'

const run = promisify(execFile)
const ROOT = join(import.meta.dirname, '..', '..')

function posts (n: number, tag: string): Array<{ collection: string, value: Record<string, unknown> }> {
  return Array.from({ length: n }, (_, i) => ({
    collection: 'app.bsky.feed.post',
    value: { text: `${tag} ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString() }
  }))
}

async function plcKey (net: TestNetwork, did: string): Promise<string> {
  const data = await (await fetch(`${net.plcUrl}/${did}/data`)).json() as { verificationMethods: { atproto: string } }
  return data.verificationMethods.atproto
}

describe('identity and heads against a real PDS and PLC', () => {
  let net: TestNetwork
  let alice: TestAccount

  // The test network's PDS is plain http on localhost: allowed only with allowHttpLocalhost.
  const resolverFor = (init: { handleResolver?: boolean } = {}): AtprotoIdentityResolver => new AtprotoIdentityResolver({
    plcUrl: net.plcUrl,
    handleResolverUrl: init.handleResolver === false ? undefined : net.pdsUrl,
    timeoutMs: 5000,
    allowHttpLocalhost: true
  })

  /** The MST root (`data`) of the repo's latest commit, read from the PDS's own getRepo CAR with @ipld/car and @ipld/dag-cbor. */
  const mstRootFromPds = async (did: string): Promise<{ commit: string, data: string }> => {
    const latest = await net.getLatestCommit(did)
    const reader = await CarReader.fromBytes(await net.getRepoCar(did))
    const [root] = await reader.getRoots()
    assert.equal(root?.toString(), latest.cid)
    const block = await reader.get(root!)
    assert.ok(block !== undefined, 'the commit block is in the CAR')
    const commit = dagCbor.decode(block.bytes) as { data: { toString: () => string } }
    return { commit: latest.cid, data: commit.data.toString() }
  }

  before(async () => {
    net = await startTestNetwork()
    alice = await net.createAccount('alice')
    await net.writeRecords(alice, posts(10, 'alice'))
  })

  after(async () => {
    await net?.stop()
  })

  describe('identity', () => {
    it('resolves a DID: handle verified both ways, PDS, signing key', async () => {
      const identity = await resolverFor().resolve(alice.did)
      assert.equal(identity.did, alice.did)
      assert.equal(identity.handle, alice.handle)
      assert.equal(identity.handleVerified, true)
      assert.equal(identity.pds, net.pdsUrl)
      assert.equal(identity.didKey, await plcKey(net, alice.did))
      assert.equal(identity.signingKey.type, 'k256')
      assert.equal(identity.document.id, alice.did)
    })

    it('resolves a handle (any case, leading @) to the same identity', async () => {
      const identity = await resolverFor().resolve(`@${alice.handle.toUpperCase()}`)
      assert.equal(identity.did, alice.did)
      assert.equal(identity.handle, alice.handle)
      assert.equal(identity.handleVerified, true)
      assert.equal(identity.didKey, await plcKey(net, alice.did))
    })

    it('a handle the resolver service does not confirm is reported but not verified', async () => {
      const elsewhere = await startServer((_req, res) => json(res, 400, { error: 'InvalidRequest', message: 'Unable to resolve handle' }))
      try {
        const identity = await new AtprotoIdentityResolver({ plcUrl: net.plcUrl, handleResolverUrl: elsewhere.url, allowHttpLocalhost: true }).resolve(alice.did)
        assert.equal(identity.handle, alice.handle)
        assert.equal(identity.handleVerified, false)
        assert.deepEqual(elsewhere.requests, [`/xrpc/com.atproto.identity.resolveHandle?handle=${alice.handle}`])
      } finally {
        await elsewhere.close()
      }
    })

    it('maps the DID to the PeerID of its key and to its rendezvous CID', async () => {
      const resolver = resolverFor()
      const identity = await resolver.resolve(alice.did)
      const peerId = await peerIdForDid(alice.did, resolver)
      assert.ok(peerId.equals(peerIdForKey(parseDidKey(identity.didKey))))
      assert.match(peerId.toString(), /^16Uiu2/)
      assert.equal(rendezvousCid(alice.did).toString(), rendezvousCid(identity.did).toString())
    })

    it('without allowHttpLocalhost, the http://localhost PDS is refused: DidDocumentError naming the DID and URL', async () => {
      const strict = new AtprotoIdentityResolver({ plcUrl: net.plcUrl, handleResolverUrl: net.pdsUrl, timeoutMs: 5000 })
      await assert.rejects(strict.resolve(alice.did), (err: Error & { did?: string, url?: string }) => {
        assert.equal(err.name, 'DidDocumentError')
        assert.equal(err.did, alice.did)
        assert.equal(err.url, net.pdsUrl)
        assert.match(err.message, /plain http on localhost/)
        return true
      })
    })

    it('an unknown handle is HandleNotFoundError', async () => {
      await assert.rejects(resolverFor().resolve('nobody-here.test'), { name: 'HandleNotFoundError' })
    })

    it('an unknown did:plc is DidNotFoundError', async () => {
      await assert.rejects(resolverFor().resolve('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'), { name: 'DidNotFoundError', tombstoned: false })
    })

    it('a malformed DID or an unsupported method is InvalidIdentifierError', async () => {
      await assert.rejects(resolverFor().resolve('did:plc:tooshort'), { name: 'InvalidIdentifierError' })
      await assert.rejects(resolverFor().resolve('did:example:alice'), { name: 'InvalidIdentifierError' })
    })

    it('caches identities until refresh', async () => {
      const resolver = resolverFor()
      const account = await net.createAccount('cache')
      const first = await resolver.resolve(account.did)
      const rotated = await net.rotateSigningKey(account, { commit: false })
      assert.equal((await resolver.resolve(account.did)).didKey, first.didKey)
      assert.equal((await resolver.refresh(account.did)).didKey, rotated.didKey)
      assert.equal((await resolver.resolve(account.did)).didKey, rotated.didKey)
    })
  })

  describe('heads', () => {
    it("equals the PDS's getLatestCommit, verified", async () => {
      const heads = new PdsHeadResolver({ identity: resolverFor() })
      const written = await net.writeRecords(alice, posts(3, 'more'))
      const head = await heads.resolveHead(alice.did)
      assert.deepEqual({ cid: head.cid.toString(), rev: head.rev }, await net.getLatestCommit(alice.did))
      assert.deepEqual({ cid: head.cid.toString(), rev: head.rev }, written.commit)
      assert.equal(head.did, alice.did)
      assert.equal(head.commit.rev, head.rev)
      assert.ok(head.commit.data.equals(head.data))
      assert.equal(head.source, `pds:${net.pdsUrl}`)
    })

    it('follows new commits', async () => {
      const heads = new PdsHeadResolver({ identity: resolverFor() })
      const before = await heads.resolveHead(alice.did)
      const { commit } = await net.deleteRecord(alice, 'app.bsky.feed.post', (await net.writeRecords(alice, posts(1, 'x'))).records[0]!.rkey)
      const after = await heads.resolveHead(alice.did)
      assert.equal(after.cid.toString(), commit.cid)
      assert.ok(after.rev > before.rev)
    })

    it('picks up a rotated key after the cached key fails the signature', async () => {
      const account = await net.createAccount('rotate')
      await net.writeRecords(account, posts(2, 'rotate'))
      const identity = resolverFor()
      const heads = new PdsHeadResolver({ identity }, { timeoutMs: 5000 })
      const old = await identity.resolve(account.did)
      await heads.resolveHead(account.did)

      const rotated = await net.rotateSigningKey(account)
      assert.notEqual(rotated.didKey, old.didKey)
      // Still cached: the old key, which does not verify the new head...
      assert.equal((await identity.resolve(account.did)).didKey, old.didKey)
      const head = await heads.resolveHead(account.did)
      assert.throws(() => { verifyCommitSignature(head.commit, old.signingKey) }, { name: 'CommitSignatureError' })
      // ...so the resolver refreshed once, verified with the new key, and says so.
      assert.equal(head.cid.toString(), rotated.commit?.cid)
      assert.equal(head.identity.didKey, rotated.didKey)
      assert.equal((await identity.resolve(account.did)).didKey, rotated.didKey)
    })

    it('a head signed by a key the DID no longer lists is CommitSignatureError', async () => {
      const account = await net.createAccount('stale')
      await net.writeRecords(account, posts(1, 'stale'))
      // PLC names a new key, but the PDS has not signed anything with it yet.
      await net.rotateSigningKey(account, { commit: false })
      const latest = await net.getLatestCommit(account.did)
      await assert.rejects(new PdsHeadResolver({ identity: resolverFor() }).resolveHead(account.did), (err: Error & { did?: string, cid?: string }) => {
        assert.equal(err.name, 'CommitSignatureError')
        assert.equal(err.did, account.did)
        assert.equal(err.cid, latest.cid)
        return true
      })
    })

    it('a deactivated account is RepoDeactivatedError, and serves again once activated', async () => {
      const account = await net.createAccount('deact')
      const heads = new PdsHeadResolver({ identity: resolverFor() })
      await net.deactivateAccount(account)
      await assert.rejects(heads.resolveHead(account.did), (err: Error & { did?: string, status?: number }) => {
        assert.equal(err.name, 'RepoDeactivatedError')
        assert.equal(err.did, account.did)
        assert.equal(err.status, 400)
        return true
      })
      await net.activateAccount(account)
      assert.equal((await heads.resolveHead(account.did)).cid.toString(), (await net.getLatestCommit(account.did)).cid)
    })

    it('a taken-down account is RepoTakendownError', async () => {
      const account = await net.createAccount('takedown')
      await net.takedownAccount(account.did)
      await assert.rejects(new PdsHeadResolver({ identity: resolverFor() }).resolveHead(account.did), { name: 'RepoTakendownError' })
    })

    it('a PDS that is down is PdsUnavailableError; it answers again once restarted', async () => {
      const identity = resolverFor()
      const heads = new PdsHeadResolver({ identity }, { timeoutMs: 2000 })
      await identity.resolve(alice.did)
      await net.stopPds()
      try {
        await assert.rejects(heads.resolveHead(alice.did), { name: 'PdsUnavailableError' })
      } finally {
        await net.startPds()
      }
      assert.equal((await heads.resolveHead(alice.did)).cid.toString(), (await net.getLatestCommit(alice.did)).cid)
    })

    it('the caller aborting is an AbortError, not wrapped', async () => {
      const heads = new PdsHeadResolver({ identity: resolverFor() })
      const controller = new AbortController()
      controller.abort()
      await assert.rejects(heads.resolveHead(alice.did, { signal: controller.signal }), { name: 'AbortError' })
    })

    it('a composite keeps the verified head when another source fails', async () => {
      const failing: HeadResolver = { name: 'broken', resolveHead: async () => { throw new Error('no peers') } }
      const head = await new CompositeHeadResolver({ pds: new PdsHeadResolver({ identity: resolverFor() }), peers: [failing] }).resolveHead(alice.did)
      assert.equal(head.cid.toString(), (await net.getLatestCommit(alice.did)).cid)
    })

    it('a composite where every source fails lists each reason', async () => {
      const account = await net.createAccount('gone')
      await net.deactivateAccount(account)
      const failing: HeadResolver = { name: 'peers', resolveHead: async () => { throw new Error('no peers') } }
      await assert.rejects(new CompositeHeadResolver({ pds: new PdsHeadResolver({ identity: resolverFor() }), peers: [failing] }).resolveHead(account.did), (err: Error & { errors?: Array<{ source: string, error: Error }> }) => {
        assert.equal(err.name, 'HeadUnavailableError')
        assert.deepEqual(err.errors?.map(e => [e.source, e.error.name]), [['pds', 'RepoDeactivatedError'], ['peers', 'Error']])
        assert.match(err.message, /pds: .*RepoDeactivated.*\| peers: no peers/)
        return true
      })
    })
  })

  describe('cli', () => {
    const cli = async (...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> => {
      try {
        const { stdout, stderr } = await run(process.execPath, ['bin/atmirror.ts', ...args], { cwd: ROOT, env: { ...process.env, ATMIRROR_PLC: net.plcUrl, ATMIRROR_HANDLE_RESOLVER: '' } })
        return { code: 0, stdout, stderr }
      } catch (err) {
        const e = err as { code: number, stdout: string, stderr: string }
        return { code: e.code, stdout: e.stdout, stderr: e.stderr }
      }
    }

    it('resolve --json by handle', async () => {
      const { code, stdout } = await cli('resolve', alice.handle, '--handle-resolver', net.pdsUrl, '--json')
      assert.equal(code, 0)
      const out = JSON.parse(stdout)
      const key = parseDidKey(out.signingKey)
      assert.ok(Date.parse(out.handleVerifiedAt) > 0, 'when the handle was verified')
      assert.deepEqual(out, {
        ok: true,
        did: alice.did,
        handle: alice.handle,
        handleVerified: true,
        pds: net.pdsUrl,
        signingKey: await plcKey(net, alice.did),
        keyType: 'k256',
        peerId: peerIdForKey(key).toString(),
        rendezvousCid: rendezvousCid(alice.did).toString(),
        source: `plc:${net.plcUrl}`,
        handleVerifiedAt: out.handleVerifiedAt
      })
    })

    it('resolve prints a table by DID', async () => {
      const { code, stdout } = await cli('resolve', alice.did, '--plc', net.plcUrl, '--handle-resolver', net.pdsUrl)
      assert.equal(code, 0)
      assert.match(stdout, new RegExp(`^did +${alice.did}$`, 'm'))
      assert.match(stdout, new RegExp(`^handle +${alice.handle.replace('.', '\\.')} \\(verified\\)$`, 'm'))
      assert.match(stdout, /^rendezvous +bafkrei/m)
    })

    it('head --json equals getLatestCommit, and data is the MST root in that commit', async () => {
      const { code, stdout } = await cli('head', alice.did, '--json')
      assert.equal(code, 0)
      const out = JSON.parse(stdout)
      const latest = await net.getLatestCommit(alice.did)
      const fromPds = await mstRootFromPds(alice.did)
      assert.deepEqual(out, { ok: true, did: alice.did, cid: latest.cid, rev: latest.rev, data: fromPds.data, source: `pds:${net.pdsUrl}`, identitySource: `plc:${net.plcUrl}` })
      assert.equal(fromPds.commit, latest.cid)
    })

    it('head <handle> resolves the handle (through --handle-resolver) and prints the verified head', async () => {
      const { code, stdout } = await cli('head', `@${alice.handle}`, '--handle-resolver', net.pdsUrl, '--json')
      assert.equal(code, 0)
      const out = JSON.parse(stdout)
      const latest = await net.getLatestCommit(alice.did)
      assert.deepEqual(out, { ok: true, did: alice.did, cid: latest.cid, rev: latest.rev, data: (await mstRootFromPds(alice.did)).data, source: `pds:${net.pdsUrl}`, identitySource: `plc:${net.plcUrl}` })
    })

    it('head <handle> prints a table', async () => {
      const { code, stdout } = await cli('head', alice.handle, '--handle-resolver', net.pdsUrl)
      assert.equal(code, 0)
      const latest = await net.getLatestCommit(alice.did)
      assert.match(stdout, new RegExp(`^did +${alice.did}$`, 'm'))
      assert.match(stdout, new RegExp(`^commit +${latest.cid}$`, 'm'))
      assert.match(stdout, new RegExp(`^data +${(await mstRootFromPds(alice.did)).data} \\(MST root\\)$`, 'm'))
      assert.match(stdout, /^source +pds:.* \(signature verified\)$/m)
    })

    it('head of an unknown handle fails with HandleNotFoundError', async () => {
      const { code, stdout } = await cli('head', 'nobody-here.test', '--handle-resolver', net.pdsUrl, '--json')
      assert.equal(code, 1)
      assert.equal(JSON.parse(stdout).error.name, 'HandleNotFoundError')
    })

    it('head of an unknown DID fails with the error name', async () => {
      const { code, stdout } = await cli('head', 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', '--json')
      assert.equal(code, 1)
      assert.equal(JSON.parse(stdout).error.name, 'DidNotFoundError')
    })

    it('resolve without an argument is a usage error', async () => {
      const { code, stderr } = await cli('resolve')
      assert.equal(code, 2)
      assert.match(stderr, /missing DID or handle/)
    })
  })
})
