/**
 * Resolving with the services down (PlcLogKeeper, AtprotoIdentityResolver with a
 * store): logs made and signed by @did-plc/lib, peers and store in memory, a
 * directory / web host / handle service that answers and then is gone. The real
 * directory and real peers are in test/e2e/plc-offline.test.ts.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import * as dagCbor from '@ipld/dag-cbor'
import { sha256 } from 'multiformats/hashes/sha2'
import { CID } from 'multiformats/cid'
import { Secp256k1Keypair } from '@atproto/crypto'
import * as plc from '@did-plc/lib'
import { PlcLogKeeper, type IdentityStore, type OfferedPlcLog, type PlcLogSource, type StoredHandle, type StoredPlcLog, type StoredWebDocument } from '../../src/identity/plc-logs.ts'
import type { PlcLogEntry } from '../../src/identity/plc-log.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { didDocument, json, startServer, testKey, type TestServer } from '../helpers/fake-servers.ts'

class MemoryIdentityStore implements IdentityStore {
  plc = new Map<string, StoredPlcLog>()
  web = new Map<string, StoredWebDocument>()
  handles = new Map<string, StoredHandle>()
  async getPlcLog (did: string): Promise<StoredPlcLog | undefined> { return this.plc.get(did) }
  async putPlcLog (record: StoredPlcLog): Promise<void> { this.plc.set(record.did, record) }
  async getWebDocument (did: string): Promise<StoredWebDocument | undefined> { return this.web.get(did) }
  async putWebDocument (record: StoredWebDocument): Promise<void> { this.web.set(record.did, record) }
  async getHandle (did: string): Promise<StoredHandle | undefined> { return this.handles.get(did) }
  async putHandle (record: StoredHandle): Promise<void> { this.handles.set(record.did, record) }
}

const peersOf = (logs: Array<{ source: string, entries: unknown }>): PlcLogSource => ({
  async * findLogs () { for (const log of logs) yield log as OfferedPlcLog }
})

async function cidOf (op: unknown): Promise<string> {
  return CID.createV1(0x71, await sha256.digest(dagCbor.encode(op))).toString()
}

const T0 = Date.UTC(2025, 0, 1)
async function entry (did: string, op: any, hours: number, nullified = false): Promise<PlcLogEntry> {
  return { did, operation: op, cid: await cidOf(op), nullified, createdAt: new Date(T0 + hours * 3_600_000).toISOString() }
}

const rotation = await Secp256k1Keypair.create()
const signing = await Secp256k1Keypair.create()
const { op: genesis, did } = await plc.createOp({ signingKey: signing.did(), handle: 'dave.test', pds: 'https://pds.example.test', rotationKeys: [rotation.did()], signer: rotation })
const moved = await plc.updatePdsOp(genesis, rotation, 'https://pds2.example.test')
const renamed = await plc.updateHandleOp(moved, rotation, 'dave2.test')
const other = await plc.updatePdsOp(genesis, rotation, 'https://elsewhere.example.test')
const short = [await entry(did, genesis, 0), await entry(did, moved, 1)]
const long = [...short, await entry(did, renamed, 2)]
const forked = [short[0] as PlcLogEntry, await entry(did, other, 1), await entry(did, await plc.updateHandleOp(other, rotation, 'x.test'), 2)]
const stored = (entries: PlcLogEntry[]): StoredPlcLog => ({ did, entries, fetchedAt: new Date(T0).toISOString(), source: 'plc:https://plc.example.test' })

describe('PlcLogKeeper.resolveOffline', () => {
  it('a peer\'s log that extends the stored one wins, and is stored', async () => {
    const store = new MemoryIdentityStore()
    store.plc.set(did, stored(short))
    const keeper = new PlcLogKeeper({ store, peers: peersOf([{ source: 'peer:A', entries: long }]) }, { plcUrl: 'https://plc.example.test' })
    const found = await keeper.resolveOffline(did)
    assert.equal(found.source, 'peer:A')
    assert.deepEqual(found.document.alsoKnownAs, ['at://dave2.test'])
    assert.equal(store.plc.get(did)?.entries.length, 3)
    assert.equal(store.plc.get(did)?.source, 'peer:A')
  })

  it('a fork or a truncated log from peers is refused: the stored log answers and stays', async () => {
    const store = new MemoryIdentityStore()
    store.plc.set(did, stored(long))
    const keeper = new PlcLogKeeper({ store, peers: peersOf([{ source: 'peer:F', entries: forked }, { source: 'peer:T', entries: short }]) }, { plcUrl: 'https://plc.example.test' })
    const found = await keeper.resolveOffline(did)
    assert.equal(found.source, 'stored-log')
    assert.deepEqual(found.refused.map(r => [r.source, r.error.name]), [['peer:F', 'PlcLogConflictError'], ['peer:T', 'PlcLogConflictError']])
    assert.match(found.refused[0]?.error.message ?? '', /forks from the stored one/)
    assert.match(found.refused[1]?.error.message ?? '', /truncated/)
    assert.deepEqual(store.plc.get(did)?.entries, long)
  })

  it('a stored log that no longer verifies is not used', async () => {
    const store = new MemoryIdentityStore()
    store.plc.set(did, stored([short[0] as PlcLogEntry, { ...short[1] as PlcLogEntry, cid: (short[0] as PlcLogEntry).cid }]))
    const keeper = new PlcLogKeeper({ store, peers: peersOf([{ source: 'peer:A', entries: short }]) }, { plcUrl: 'https://plc.example.test' })
    assert.equal((await keeper.resolveOffline(did)).source, 'peer:A')
  })

  it('nothing usable anywhere: one DidResolutionError listing every source', async () => {
    const keeper = new PlcLogKeeper({ store: new MemoryIdentityStore(), peers: peersOf([{ source: 'peer:X', entries: [] }]) }, { plcUrl: 'https://plc.example.test' })
    await assert.rejects(keeper.resolveOffline(did, { directoryError: new Error('connect ECONNREFUSED') }), (err: Error) => {
      assert.equal(err.name, 'DidResolutionError')
      assert.match(err.message, /directory: connect ECONNREFUSED; stored-log: none; peer:X: PLC log invalid: empty log/)
      return true
    })
  })

  it('a log that ends in a tombstone: DidNotFoundError (tombstoned)', async () => {
    const tomb = await plc.tombstoneOp(CID.parse(await cidOf(moved)), rotation)
    const keeper = new PlcLogKeeper({ peers: peersOf([{ source: 'peer:A', entries: [...short, await entry(did, tomb, 2)] }]) }, { plcUrl: 'https://plc.example.test' })
    await assert.rejects(keeper.resolveOffline(did), (err: Error & { tombstoned?: boolean }) => {
      assert.equal(err.name, 'DidNotFoundError')
      assert.equal(err.tombstoned, true)
      return true
    })
  })
})

describe('AtprotoIdentityResolver with the services down', () => {
  let directory: TestServer
  let web: TestServer
  let handles: TestServer
  const key = testKey('erin')
  /** What the did:web host serves instead of the good document, when set. */
  let webServes: unknown

  before(async () => {
    directory = await startServer((_req, res, url) => {
      if (url.pathname === `/${did}/log/audit`) json(res, 200, long)
      else json(res, 404, { message: 'DID not registered' })
    })
    web = await startServer((_req, res) => { json(res, 200, webServes ?? didDocument(`did:web:localhost%3A${web.port}`, key, 'https://pds.example.test', 'erin.test')) })
    handles = await startServer((_req, res) => { json(res, 200, { did: `did:web:localhost%3A${web.port}` }) })
  })

  after(async () => {
    await directory?.close()
    await web?.close()
    await handles?.close()
  })

  it('did:plc: from the stored log when the directory is down, and says so', async () => {
    const store = new MemoryIdentityStore()
    const up = new AtprotoIdentityResolver({ plcUrl: directory.url, store, allowHttpLocalhost: true, timeoutMs: 2000 })
    await up.plcLogs.refresh(did)
    assert.equal(store.plc.get(did)?.entries.length, 3)
    await directory.close()
    const down = new AtprotoIdentityResolver({ plcUrl: directory.url, store, allowHttpLocalhost: true, timeoutMs: 2000 })
    const identity = await down.resolve(did, { verifyHandle: false })
    assert.equal(identity.source, 'stored-log')
    assert.equal(identity.pds, 'https://pds2.example.test')
    assert.equal(identity.handle, 'dave2.test')
    assert.equal(identity.didKey, signing.did())
    // without a store the directory's own failure stands
    await assert.rejects(new AtprotoIdentityResolver({ plcUrl: directory.url, allowHttpLocalhost: true, timeoutMs: 2000 }).resolve(did), (err: Error & { url?: string }) => {
      assert.equal(err.name, 'DidResolutionError')
      assert.equal(err.url, `${directory.url}/${did}`)
      return true
    })
  })

  it('did:web: a document that is not usable does not replace the last good one', async () => {
    const webDid = `did:web:localhost%3A${web.port}`
    const store = new MemoryIdentityStore()
    const resolver = new AtprotoIdentityResolver({ store, allowHttpLocalhost: true, timeoutMs: 2000 })
    await resolver.resolve(webDid, { verifyHandle: false })
    const good = store.web.get(webDid)
    assert.ok(good !== undefined)
    webServes = { id: webDid }
    try {
      await assert.rejects(resolver.refresh(webDid, { verifyHandle: false }), { name: 'DidDocumentError' })
    } finally {
      webServes = undefined
    }
    assert.deepEqual(store.web.get(webDid), good)
  })

  it('did:web: the last document while the host is down, and the handle last verified both ways', async () => {
    const webDid = `did:web:localhost%3A${web.port}`
    const store = new MemoryIdentityStore()
    const up = new AtprotoIdentityResolver({ store, allowHttpLocalhost: true, handleResolverUrl: handles.url, timeoutMs: 2000 })
    const first = await up.resolve(webDid)
    assert.equal(first.source, `web:http://localhost:${web.port}/.well-known/did.json`)
    assert.equal(first.handleVerified, true)
    const verifiedAt = store.handles.get(webDid)?.verifiedAt
    assert.equal(first.handleVerifiedAt, verifiedAt)
    const fetchedAt = store.web.get(webDid)?.fetchedAt
    assert.ok(fetchedAt !== undefined)
    await web.close()
    await handles.close()
    const down = new AtprotoIdentityResolver({ store, allowHttpLocalhost: true, handleResolverUrl: handles.url, timeoutMs: 2000 })
    const later = await down.resolve(webDid)
    assert.equal(later.source, `stored-web:${fetchedAt}`)
    assert.equal(later.didKey, first.didKey)
    assert.equal(later.handle, 'erin.test')
    assert.equal(later.handleVerified, true, 'the handle last verified both ways still counts')
    assert.equal(later.handleVerifiedAt, verifiedAt)
    // a resolver without that history cannot verify the handle now
    const fresh = new AtprotoIdentityResolver({ store: new MemoryIdentityStore(), allowHttpLocalhost: true, handleResolverUrl: handles.url, timeoutMs: 2000 })
    await assert.rejects(fresh.resolve(webDid), { name: 'DidResolutionError' })
  })
})
