/**
 * Identity without the PLC directory: a real PDS + PLC (support/network.ts) and
 * real nodes (createMirrorNode) in private mode on loopback.
 *
 * A node that follows the PDS's firehose stores each new operation of the DID's log
 * on `#identity`. A pins the account while everything is up, keeps its verified PLC
 * log and serves the directory's read API for it. Then the PDS and the PLC
 * directory both stop. C, a fresh node given only A's address (`--peer`), resolves
 * the DID from A's log (`/atmirror/plc/1.0.0`), takes the head by head exchange and
 * the blocks by Bitswap, verifies the repo, keeps the log and serves a record
 * written before the outage. With A gone too, E (given only C's address) gets a
 * record from C. Peers offering a forged or truncated log change nothing; the CLI's
 * `resolve`, `head` and `mirror` with `--peer` say where the identity came from.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import type { MirrorNode } from '../../src/node.ts'
import type { MirrorNetwork } from '../../src/net/network.ts'
import { PlcExchange } from '../../src/net/plc-exchange.ts'
import { PlcLogKeeper, type PlcLogSource } from '../../src/identity/plc-logs.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { parseAtprotoDocument } from '../../src/identity/did-document.ts'
import type { Multiaddr } from '@multiformats/multiaddr'
import { parseCid } from '../../src/repo/cid.ts'
import { recordsOf, startBarePeer, startTestNode, stopPeers } from '../helpers/nodes.ts'
import { until } from '../helpers/until.ts'
import { startTestNetwork, type TestAccount, type TestNetwork, type WrittenRecord } from '../../support/network.ts'

const pexec = promisify(execFile)
const CLI = join(import.meta.dirname, '../../bin/atmirror.ts')

describe('identity and repo with the PDS and the PLC directory both down', () => {
  let net: TestNetwork
  let root: string
  let account: TestAccount
  let written: WrittenRecord[]
  const nodes: MirrorNode[] = []
  const bare: Array<{ net: MirrorNetwork, exchange: PlcExchange }> = []
  let a: MirrorNode
  let c: MirrorNode

  async function node (name: string, peers: MirrorNode[], init: { http?: boolean, follow?: boolean } = {}): Promise<MirrorNode> {
    return await startTestNode(nodes, { root, plcUrl: net.plcUrl }, name, {
      peers,
      init: { http: init.http === true ? { port: 0 } : false, follow: init.follow === true ? {} : false }
    })
  }

  /** A bare peer answering the PLC log exchange with `log()`. */
  async function logPeer (log: () => unknown[]): Promise<{ net: MirrorNetwork, exchange: PlcExchange }> {
    const peerNet = await startBarePeer()
    const exchange = new PlcExchange({ libp2p: peerNet.libp2p, logs: { getPlcLog: async () => ({ entries: log() as any }) } })
    await exchange.start()
    const peer = { net: peerNet, exchange }
    bare.push(peer)
    return peer
  }

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-plc-'))
    account = await net.createAccount('offline')
    // a log of more than a genesis: the signing key rotated
    await net.rotateSigningKey(account)
    written = (await net.writeRecords(account, Array.from({ length: 40 }, (_, i) => ({
      collection: 'app.bsky.feed.post',
      value: { text: `before the outage ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString() }
    })))).records
  })

  after(async () => {
    await stopPeers(bare, nodes)
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('a following node keeps the log current: an #identity event from the PDS\'s firehose brings the new operation in', async () => {
    // a daemon follows its hosts; stopped before the outage (the PDS's server waits for open WebSockets)
    const f = await node('f', [], { follow: true })
    try {
      await f.pin(account.did)
      assert.equal((await f.identityStore?.getPlcLog(account.did))?.entries.length, 2)
      await until('F to follow the PDS', async () => (await f.status()).subscriptions?.some(sub => sub.state === 'connected') === true)
      const { didKey } = await net.rotateSigningKey(account)
      await until('the stored log to hold the rotation', async () => (await f.identityStore?.getPlcLog(account.did))?.entries.length === 3)
      const stored = await f.identityStore?.getPlcLog(account.did)
      assert.equal((stored?.entries[2]?.operation as { verificationMethods?: Record<string, string> }).verificationMethods?.atproto, didKey)
    } finally {
      await f.stop()
    }
  })

  it('A mirrors the account while everything is up and keeps its verified PLC log', async () => {
    a = await node('a', [], { http: true })
    const result = await a.pin(account.did)
    assert.equal(result.sync.records, 40)
    const stored = await a.identityStore?.getPlcLog(account.did)
    assert.equal(stored?.source, `plc:${net.plcUrl}`)
    assert.equal(stored?.entries.length, 3)
    assert.equal((await a.identity.resolve(account.did)).source, `plc:${net.plcUrl}`)
  })

  it('A serves the PLC directory\'s read API for the DID: the same log and data, a document that says the same', async () => {
    const http = a.http?.url as string
    const get = async (base: string, path: string): Promise<{ status: number, body: any }> => {
      const res = await fetch(`${base}${path}`)
      return { status: res.status, body: await res.json() }
    }
    for (const path of [`/${account.did}/log/audit`, `/${account.did}/data`, `/${account.did}/log`, `/${account.did}/log/last`]) {
      assert.deepEqual(await get(http, path), await get(net.plcUrl, path), path)
    }
    const served = await get(http, `/${account.did}`)
    assert.equal(served.status, 200)
    const ours = parseAtprotoDocument(account.did, served.body, { allowHttpLocalhost: true })
    const theirs = parseAtprotoDocument(account.did, (await get(net.plcUrl, `/${account.did}`)).body, { allowHttpLocalhost: true })
    assert.deepEqual(ours, theirs)
    const unknown = await get(http, '/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa')
    assert.equal(unknown.status, 404)
    assert.match(unknown.body.message, /DID not registered/)
    // a resolver can use the mirror as its directory
    const viaMirror = new AtprotoIdentityResolver({ plcUrl: http, allowHttpLocalhost: true })
    const identity = await viaMirror.resolve(account.did, { verifyHandle: false })
    assert.equal(identity.didKey, theirs.didKey)
    assert.equal(identity.source, `plc:${http}`)
    assert.equal((await viaMirror.plcLogs.fetchLog(account.did)).entries.length, 3)
  })

  it('with the PDS and the directory down, a fresh node given only A resolves the DID from A, mirrors and verifies the repo', async () => {
    await net.stopPds()
    await net.stopPlc()
    c = await node('c', [a], { http: true })
    const identity = await c.identity.resolve(account.did, { verifyHandle: false })
    assert.equal(identity.source, `peer:${a.network?.peerId.toString()}`)
    assert.equal(identity.didKey, (await a.identity.resolve(account.did)).didKey)
    assert.ok((a.p2p?.plcExchange.stats().served ?? 0) > 0, 'A served its log')
    const result = await c.mirror(account.did)
    assert.equal(result.records, 40)
    assert.equal(result.fetched.pds, 0)
    assert.equal(result.commit.toString(), (await a.store.getState(account.did))?.commit)
    assert.deepEqual(await recordsOf(c, account.did), await recordsOf(a, account.did))
    // C keeps the log it verified, for the next outage and for its own peers
    const kept = await c.identityStore?.getPlcLog(account.did)
    assert.equal(kept?.source, `peer:${a.network?.peerId.toString()}`)
    assert.equal(kept?.entries.length, 3)
    // and serves a record written before the outage, with its proof
    const record = written[3] as WrittenRecord
    const res = await fetch(`${c.http?.url ?? ''}/xrpc/com.atproto.repo.getRecord?repo=${account.did}&collection=${record.collection}&rkey=${record.rkey}`)
    assert.equal(res.status, 200)
    const body = await res.json() as { uri: string, cid: string, value: { text: string } }
    assert.deepEqual([body.uri, body.cid, body.value.text], [record.uri, record.cid, 'before the outage 3'])
  })

  it('with A gone too, a node given only C gets a record written before the outage from C', async () => {
    await a.stop()
    const e = await node('e', [c])
    const identity = await e.identity.resolve(account.did, { verifyHandle: false })
    assert.equal(identity.source, `peer:${c.network?.peerId.toString()}`)
    const record = written[7] as WrittenRecord
    const bytes = await e.getBlock(parseCid(record.cid), { did: account.did })
    assert.ok(bytes.byteLength > 0)
    assert.equal((await e.store.getBlock(parseCid(record.cid))), undefined, 'fetched, not stored')
  })

  it('peers offering a truncated or forged log are refused; the stored log stays', async () => {
    const stored = await c.identityStore?.getPlcLog(account.did)
    assert.ok(stored !== undefined)
    const truncated = await logPeer(() => stored.entries.slice(0, 1))
    // the second operation with the genesis's signature, its CID made to fit
    const forgedOp = { ...stored.entries[1]?.operation, sig: stored.entries[0]?.operation.sig }
    const forgedEntry = { ...stored.entries[1], operation: forgedOp, cid: CID.createV1(0x71, await sha256.digest(dagCbor.encode(forgedOp))).toString() }
    const forged = await logPeer(() => [stored.entries[0], forgedEntry])
    const exchange = c.p2p?.plcExchange as PlcExchange
    for (const peer of [truncated, forged]) await c.network?.libp2p.dial(peer.net.getMultiaddrs()[0] as Multiaddr)
    const fromPeers = (peers: typeof bare): PlcLogSource => ({
      async * findLogs (did) {
        for (const peer of peers) yield { source: `peer:${peer.net.peerId.toString()}`, entries: await exchange.requestLog(peer.net.peerId, did) }
      }
    })
    const keeper = new PlcLogKeeper({ store: c.identityStore, peers: fromPeers([truncated, forged]) }, { plcUrl: net.plcUrl })
    const found = await keeper.resolveOffline(account.did)
    assert.equal(found.source, 'stored-log')
    assert.deepEqual(found.refused.map(r => r.source), [`peer:${truncated.net.peerId.toString()}`, `peer:${forged.net.peerId.toString()}`])
    assert.match(found.refused[0]?.error.message ?? '', /PLC log refused: the offered log has 1 entries, the stored one 3: truncated/)
    assert.equal(found.refused[0]?.error.name, 'PlcLogConflictError')
    assert.equal(found.refused[1]?.error.name, 'PlcLogInvalidError')
    assert.match(found.refused[1]?.error.message ?? '', /signature is not by any rotation key valid at this point .*; did=\S+ index=1 cid=/)
    assert.deepEqual((await c.identityStore?.getPlcLog(account.did))?.entries, stored.entries)
    // with nothing stored, a forged log alone resolves nothing
    const unstored = new PlcLogKeeper({ peers: fromPeers([forged]) }, { plcUrl: net.plcUrl })
    await assert.rejects(unstored.resolveOffline(account.did), (err: Error) => {
      assert.equal(err.name, 'DidResolutionError')
      assert.match(err.message, /signature is not by any rotation key valid at this point/)
      return true
    })
  })

  it('atmirror resolve, head and mirror with --peer say where the identity came from', async () => {
    const env = { ...process.env, ATMIRROR_PLC: net.plcUrl }
    const peer = c.network?.getMultiaddrs()[0]?.toString() as string
    const resolved = JSON.parse((await pexec(process.execPath, [CLI, 'resolve', account.did, '--peer', peer, '--json'], { env })).stdout)
    assert.equal(resolved.source, `peer:${c.network?.peerId.toString()}`)
    const head = JSON.parse((await pexec(process.execPath, [CLI, 'head', account.did, '--peer', peer, '--json'], { env })).stdout)
    assert.equal(head.identitySource, `peer:${c.network?.peerId.toString()}`)
    assert.equal(head.source, `peer:${c.network?.peerId.toString()}`)
    assert.equal(head.cid, (await c.store.getState(account.did))?.commit)
    // and `mirror --peer` on a fresh data directory: identity, head and blocks from C
    const dir = join(root, 'cli')
    const mirrored = JSON.parse((await pexec(process.execPath, [CLI, 'mirror', account.did, '--peer', peer, '--data', dir, '--json'], { env })).stdout)
    assert.equal(mirrored.identitySource, `peer:${c.network?.peerId.toString()}`)
    assert.equal(mirrored.source, `peer:${c.network?.peerId.toString()}`)
    assert.equal(mirrored.records, 40)
    assert.equal(mirrored.commit, (await c.store.getState(account.did))?.commit)
  })
})
