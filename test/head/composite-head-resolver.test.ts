import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { CompositeHeadResolver } from '../../src/head/composite-head-resolver.ts'
import type { Head, HeadResolver } from '../../src/head/head-resolver.ts'
import type { Identity, IdentityResolver } from '../../src/identity/resolver.ts'
import { PdsUnavailableError, RepoDeactivatedError } from '../../src/errors.ts'
import { decodeCommit } from '../../src/repo/commit.ts'
import { parseDidKey } from '../../src/repo/keys.ts'
import { signedCommit, testDid, testKey, type TestKey } from '../helpers/fake-servers.ts'
import { until } from '../helpers/until.ts'

const DID = testDid('composite')
const OLD_KEY = testKey('composite-old')
const NEW_KEY = testKey('composite-new')

function identityWith (key: TestKey, pds = 'http://localhost:1'): Identity {
  return { did: DID, handleVerified: false, signingKey: parseDidKey(key.didKey), didKey: key.didKey, pds, document: { id: DID } as Identity['document'] }
}

/** A head as a source would return it: signed by `key`, verified against `identity`. */
function headOf (name: string, rev: string, key: TestKey, identity: Identity): Head {
  const commit = signedCommit(DID, key, rev)
  return { did: DID, cid: commit.cid, rev, data: commit.data, commit: decodeCommit(commit.bytes, commit.cid), bytes: commit.bytes, source: name, identity }
}

/** A source answering `answer` (a head, or an error) after `delayMs`, recording what it was asked with. */
function source (name: string, answer: (identity: Identity) => Head | Error, delayMs = 0): HeadResolver & { asked: Array<Identity | undefined> } {
  const asked: Array<Identity | undefined> = []
  return {
    name,
    asked,
    async resolveHead (_did, options = {}) {
      asked.push(options.identity)
      await new Promise(resolve => setTimeout(resolve, delayMs))
      options.signal?.throwIfAborted()
      const result = answer(options.identity ?? identityWith(OLD_KEY))
      if (result instanceof Error) throw result
      return result
    }
  }
}

/** A peer source that never answers: it only ends when its signal aborts, and says so. */
function silentPeer (): HeadResolver & { aborted: Promise<unknown>, asked: number } {
  let aborted!: (reason: unknown) => void
  const seen = new Promise<unknown>(resolve => { aborted = resolve })
  const peer = {
    name: 'peers',
    aborted: seen,
    asked: 0,
    async resolveHead (_did: string, options: { signal?: AbortSignal } = {}) {
      peer.asked++
      return await new Promise<Head>((_resolve, reject) => {
        options.signal?.addEventListener('abort', () => {
          aborted(options.signal?.reason)
          reject(options.signal?.reason)
        }, { once: true })
      })
    }
  }
  return peer
}

/** An identity resolver whose current document names `current()`'s key. */
function identities (current: () => Identity): IdentityResolver & { resolved: number } {
  const resolver = {
    resolved: 0,
    async resolve () { resolver.resolved++; return current() },
    async refresh () { return current() }
  }
  return resolver
}

describe('CompositeHeadResolver', () => {
  it("takes the PDS's verified head at once and aborts the peers' lookup instead of awaiting it", async () => {
    const peers = silentPeer()
    const identity = identityWith(OLD_KEY)
    const pds = source('pds', id => headOf('pds', '3l3qo2vutsw2b', OLD_KEY, id))
    const head = await new CompositeHeadResolver({ pds, peers: [peers] }).resolveHead(DID, { identity })
    assert.equal(head.source, 'pds')
    assert.equal(head.identity, identity)
    // the resolution returned while the peer was still waiting; it was told to stop
    const reason = await peers.aborted as Error
    assert.equal(reason.name, 'AbortError')
  })

  it('a peer with a higher rev does not override the PDS (no grace period)', async () => {
    const pds = source('pds', id => headOf('pds', '3l3qo2vutsw2b', OLD_KEY, id), 5)
    const peer = source('peer', id => headOf('peer', '3l3qo2vutsw2d', OLD_KEY, id))
    const head = await new CompositeHeadResolver({ pds, peers: [peer] }).resolveHead(DID, { identity: identityWith(OLD_KEY) })
    assert.equal(head.source, 'pds')
    assert.equal(head.rev, '3l3qo2vutsw2b')
  })

  it('resolves the identity once and hands the same one to every source', async () => {
    const identity = identityWith(OLD_KEY)
    const resolver = identities(() => identity)
    const pds = source('pds', () => new PdsUnavailableError('down'))
    const peer = source('peer', id => headOf('peer', '3l3qo2vutsw2b', OLD_KEY, id))
    const head = await new CompositeHeadResolver({ pds, peers: [peer], identity: resolver }).resolveHead(DID)
    assert.equal(head.source, 'peer')
    assert.deepEqual([pds.asked, peer.asked], [[identity], [identity]])
  })

  it('when the PDS fails, the highest verified rev among the peers wins', async () => {
    const pds = source('pds', () => new PdsUnavailableError('timed out'))
    const head = await new CompositeHeadResolver({
      pds,
      peers: [
        source('peer-a', id => headOf('peer-a', '3l3qo2vutsw2d', OLD_KEY, id), 5),
        source('peer-b', id => headOf('peer-b', '3l3qo2vutsw2c', OLD_KEY, id)),
        source('peer-c', () => new Error('no peers'))
      ]
    }).resolveHead(DID, { identity: identityWith(OLD_KEY) })
    assert.equal(head.rev, '3l3qo2vutsw2d')
    assert.equal(head.source, 'peer-a')
  })

  it('when the PDS fails after the key rotated, a peer head signed by the rotated-out key is refused', async () => {
    const stale = identityWith(OLD_KEY)
    const fresh = identityWith(NEW_KEY)
    // the PDS's attempt refreshed the document (a bad signature): the node now knows the new key
    const resolver = identities(() => fresh)
    const pds = source('pds', () => new PdsUnavailableError('getRepo failed'))
    const replay = source('peer-a', id => headOf('peer-a', '3l3qo2vutsw2z', OLD_KEY, id))
    const genuine = source('peer-b', id => headOf('peer-b', '3l3qo2vutsw2c', NEW_KEY, id === stale ? fresh : id))
    const head = await new CompositeHeadResolver({ pds, peers: [replay, genuine], identity: resolver }).resolveHead(DID, { identity: stale })
    assert.equal(head.source, 'peer-b')
    assert.equal(head.identity.didKey, NEW_KEY.didKey)
    // and with no genuine answer, the replay is listed as refused
    await assert.rejects(new CompositeHeadResolver({ pds, peers: [replay], identity: resolver }).resolveHead(DID, { identity: stale }), (err: Error & { errors?: Array<{ source: string, error: Error }> }) => {
      assert.equal(err.name, 'HeadUnavailableError')
      assert.deepEqual(err.errors?.map(e => [e.source, e.error.name]), [['pds', 'PdsUnavailableError'], ['peer-a', 'CommitSignatureError']])
      return true
    })
  })

  it('when every source fails, HeadUnavailableError lists each reason, the PDS first', async () => {
    const deactivated = new RepoDeactivatedError('com.atproto.sync.getLatestCommit: RepoDeactivated', { did: DID })
    const down = new PdsUnavailableError('timed out')
    await assert.rejects(new CompositeHeadResolver({ pds: source('pds', () => deactivated), peers: [source('peers', () => down)] }).resolveHead(DID), (err: Error & { did?: string, errors?: Array<{ source: string, error: Error }> }) => {
      assert.equal(err.name, 'HeadUnavailableError')
      assert.equal(err.did, DID)
      assert.deepEqual(err.errors?.map(e => e.source), ['pds', 'peers'])
      assert.equal(err.errors?.[0]?.error, deactivated)
      return true
    })
  })

  it("the caller's abort is rethrown, not aggregated, and stops the peers", async () => {
    const controller = new AbortController()
    const peers = silentPeer()
    const pds = source('pds', id => headOf('pds', '3l3qo2vutsw2b', OLD_KEY, id), 50)
    const resolving = assert.rejects(new CompositeHeadResolver({ pds, peers: [peers] }).resolveHead(DID, { signal: controller.signal, identity: identityWith(OLD_KEY) }), { name: 'AbortError' })
    // aborted while both are at work: the PDS answers only after 50 ms, the peers never
    await until('both sources to be asked', () => pds.asked.length === 1 && peers.asked === 1)
    controller.abort()
    await resolving
    assert.equal((await peers.aborted as Error).name, 'AbortError')
  })
})
