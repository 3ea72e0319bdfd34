/**
 * The head-exchange protocol between two bare libp2p nodes on loopback: what a good
 * responder serves, and how both ends cut off peers that break the limits (oversized
 * or malformed frames, slow streams, too many streams). Raw stream handlers play the
 * hostile side so every malformed byte sequence is exact.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import * as dagCbor from '@ipld/dag-cbor'
import { Secp256k1Keypair, type Keypair } from '@atproto/crypto'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { createHash } from 'node:crypto'
import { HEAD_PROTOCOL, HeadExchange, type LocalHead } from '../../src/net/head-exchange.ts'
import { encodeFrame, readFrame } from '../../src/net/exchange.ts'
import { peerIdFromString } from '@libp2p/peer-id'
import { MirrorFinder } from '../../src/net/mirrors.ts'
import { PeerHeadResolver } from '../../src/net/peer-head-resolver.ts'
import { parseDidKey } from '../../src/repo/keys.ts'
import type { Identity, IdentityResolver } from '../../src/identity/resolver.ts'
import { until } from '../helpers/until.ts'
import type { Libp2p, Stream } from '@libp2p/interface'

const DID = 'did:plc:ewvi7nxzyoun6zhxrhs64oiz'
const OTHER_DID = 'did:plc:44ybard66vv44zksje25o7dz'

function cidOf (bytes: Uint8Array): CID {
  return CID.createV1(0x71, Digest.create(0x12, createHash('sha256').update(bytes).digest()))
}

/** A signed commit made test-side (dag-cbor + @atproto/crypto), not with the engine. */
async function signedCommit (keypair: Keypair, init: { did?: string, rev: string }): Promise<LocalHead> {
  const data = cidOf(dagCbor.encode({ e: [], l: null }))
  const unsigned = { did: init.did ?? DID, version: 3, data, rev: init.rev, prev: null }
  const sig = await keypair.sign(dagCbor.encode(unsigned))
  const bytes = dagCbor.encode({ ...unsigned, sig })
  return { cid: cidOf(bytes), bytes }
}

/** A commit for DID with `sig` as given (omitted when `undefined`): what a hostile peer may send. */
function commitWithSig (sig: Uint8Array | undefined, rev = '3l3qo2vutsw4z'): LocalHead {
  const data = cidOf(dagCbor.encode({ e: [], l: null }))
  const unsigned = { did: DID, version: 3, data, rev, prev: null }
  const bytes = dagCbor.encode(sig === undefined ? unsigned : { ...unsigned, sig })
  return { cid: cidOf(bytes), bytes }
}

async function bareNode (): Promise<Libp2p> {
  return await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()]
  })
}

/** A responder that writes `bytes` verbatim and then closes (or stalls when told). */
async function rawResponder (node: Libp2p, protocol: string, bytes: Uint8Array | null, init: { stall?: boolean } = {}): Promise<void> {
  await node.handle(protocol, async (stream: Stream) => {
    try {
      await readFrame(stream, 4096)
      if (bytes !== null) stream.send(bytes)
      if (init.stall === true) return
      await stream.close()
    } catch {
      stream.abort(new Error('raw responder failed'))
    }
  })
}

/** Opens a raw stream to `node`'s head protocol, sends `bytes`, and reads what comes back (or why it ended). */
async function rawAsk (from: Libp2p, to: Libp2p, bytes: Uint8Array, init: { close?: boolean } = {}): Promise<{ frame?: unknown, ended?: string }> {
  const stream = await from.dialProtocol(to.peerId, HEAD_PROTOCOL)
  try {
    stream.send(bytes)
    if (init.close !== false) await stream.close()
    const frame = await readFrame(stream, 16384)
    return { frame: dagCbor.decode(frame) }
  } catch (err) {
    return { ended: (err as Error).name }
  }
}

describe('head exchange', () => {
  let a: Libp2p
  let b: Libp2p
  let keypair: Keypair
  let head: LocalHead
  let served: HeadExchange
  let asker: HeadExchange
  let rawProtocol = 0
  const nextProtocol = (): string => `/atmirror/head-test/${++rawProtocol}`

  before(async () => {
    keypair = await Secp256k1Keypair.create()
    head = await signedCommit(keypair, { rev: '3l3qo2vutsw2b' })
    a = await bareNode()
    b = await bareNode()
    served = new HeadExchange({
      libp2p: a,
      heads: { getLocalHead: async (did) => did === DID ? head : undefined }
    }, { timeoutMs: 500, maxConcurrentInbound: 2 })
    await served.start()
    asker = new HeadExchange({ libp2p: b }, { timeoutMs: 500 })
    await b.dial(a.getMultiaddrs())
  })

  after(async () => {
    await served.stop()
    await Promise.all([a.stop(), b.stop()])
  })

  describe('asker', () => {
    it('gets the served commit block', async () => {
      const before = served.stats()
      const answer = await asker.requestHead(a.peerId, DID)
      assert.deepEqual(served.stats(), { requests: before.requests + 1, served: before.served + 1 })
      assert.equal(answer.cid.toString(), head.cid.toString())
      assert.ok(Buffer.from(answer.bytes).equals(head.bytes))
      assert.equal(answer.commit.rev, '3l3qo2vutsw2b')
      assert.equal(answer.commit.did, DID)
      assert.equal(answer.peer.toString(), a.peerId.toString())
    })

    it('NotFound for a DID the peer does not hold', async () => {
      const before = served.stats()
      await assert.rejects(asker.requestHead(a.peerId, OTHER_DID), { name: 'PeerHeadNotFoundError' })
      assert.deepEqual(served.stats(), { requests: before.requests + 1, served: before.served })
    })

    it('rejects a frame length above the cap before reading it', async () => {
      const protocol = nextProtocol()
      // varint(100000) and nothing else: the cap is checked on the header alone
      await rawResponder(a, protocol, Uint8Array.from([0xa0, 0x8d, 0x06]))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), (err: Error) => err.name === 'PeerProtocolError' && /exceeds the 16384-byte cap/.test(err.message))
    })

    it('rejects an oversized answer (20 KB block)', async () => {
      const protocol = nextProtocol()
      const block = new Uint8Array(20_000)
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ cid: cidOf(block), block })))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), { name: 'PeerProtocolError' })
    })

    it('cuts off a peer that never answers', async () => {
      const protocol = nextProtocol()
      await rawResponder(a, protocol, null, { stall: true })
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 300 })
      const started = Date.now()
      await assert.rejects(ask.requestHead(a.peerId, DID), { name: 'PeerTimeoutError' })
      assert.ok(Date.now() - started < 2000)
    })

    it('cuts off a peer that sends half a frame and stalls', async () => {
      const protocol = nextProtocol()
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ cid: head.cid, block: head.bytes })).subarray(0, 20), { stall: true })
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 300 })
      await assert.rejects(ask.requestHead(a.peerId, DID), { name: 'PeerTimeoutError' })
    })

    it('rejects a truncated frame', async () => {
      const protocol = nextProtocol()
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ cid: head.cid, block: head.bytes })).subarray(0, 20))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), (err: Error) => err.name === 'PeerProtocolError' && /stream ended after/.test(err.message))
    })

    it('rejects a non-minimal length varint', async () => {
      const protocol = nextProtocol()
      await rawResponder(a, protocol, Uint8Array.from([0x81, 0x00, 0xa0]))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), (err: Error) => err.name === 'PeerProtocolError' && /not minimal/.test(err.message))
    })

    it('rejects an answer that is not DRISL', async () => {
      const protocol = nextProtocol()
      await rawResponder(a, protocol, encodeFrame(Uint8Array.from([0xff, 0x00, 0x01])))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), (err: Error) => err.name === 'PeerProtocolError' && /not DRISL/.test(err.message))
    })

    it('rejects an answer with a non-canonical map (keys out of order)', async () => {
      const protocol = nextProtocol()
      // {"block": …, "cid": …}: DRISL sorts keys length first, so "cid" must come first
      const cidBytes = dagCbor.encode(head.cid)
      const blockBytes = dagCbor.encode(head.bytes)
      const body = Buffer.concat([Uint8Array.from([0xa2, 0x65]), Buffer.from('block'), blockBytes, Uint8Array.from([0x63]), Buffer.from('cid'), cidBytes])
      await rawResponder(a, protocol, encodeFrame(body))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), (err: Error) => err.name === 'PeerProtocolError' && /not DRISL/.test(err.message))
    })

    it('rejects an answer whose cid is not a link', async () => {
      const protocol = nextProtocol()
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ cid: head.cid.toString(), block: head.bytes })))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), (err: Error) => err.name === 'PeerProtocolError' && /not a CID link/.test(err.message))
    })

    it('rejects a block that does not hash to its cid', async () => {
      const protocol = nextProtocol()
      const tampered = Uint8Array.from(head.bytes)
      tampered[tampered.length - 1] ^= 1
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ cid: head.cid, block: tampered })))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), { name: 'CidMismatchError' })
    })

    it('rejects a block that is not a commit', async () => {
      const protocol = nextProtocol()
      const block = dagCbor.encode({ text: 'not a commit' })
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ cid: cidOf(block), block })))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), { name: 'CommitInvalidError' })
    })

    it('rejects a commit for another DID', async () => {
      const protocol = nextProtocol()
      const other = await signedCommit(keypair, { did: OTHER_DID, rev: '3l3qo2vutsw2c' })
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ cid: other.cid, block: other.bytes })))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), { name: 'CommitDidMismatchError' })
    })

    it('rejects an unsigned commit (no sig)', async () => {
      const protocol = nextProtocol()
      const unsigned = commitWithSig(undefined)
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ cid: unsigned.cid, block: unsigned.bytes })))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), (err: Error) => err.name === 'CommitInvalidError' && /sig/.test(err.message))
    })

    it('rejects a commit whose sig is too short', async () => {
      const protocol = nextProtocol()
      const short = commitWithSig(new Uint8Array(32).fill(1))
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ cid: short.cid, block: short.bytes })))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), (err: Error) => err.name === 'CommitInvalidError' && /32 bytes, want 64/.test(err.message))
    })

    it('reports an unknown error code', async () => {
      const protocol = nextProtocol()
      await rawResponder(a, protocol, encodeFrame(dagCbor.encode({ error: 'InternalError' })))
      const ask = new HeadExchange({ libp2p: b }, { protocol, timeoutMs: 500 })
      await assert.rejects(ask.requestHead(a.peerId, DID), (err: Error) => err.name === 'PeerError' && /InternalError/.test(err.message))
    })
  })

  describe('responder', () => {
    it('answers a well-formed raw request', async () => {
      const result = await rawAsk(b, a, encodeFrame(dagCbor.encode({ did: DID })))
      const frame = result.frame as { cid: CID, block: Uint8Array }
      assert.equal(CID.asCID(frame.cid)?.toString(), head.cid.toString())
      assert.ok(Buffer.from(frame.block).equals(head.bytes))
    })

    it('answers InvalidRequest to a request without a DID', async () => {
      const result = await rawAsk(b, a, encodeFrame(dagCbor.encode({ handle: 'alice.test' })))
      assert.deepEqual(result.frame, { error: 'InvalidRequest' })
    })

    it('answers InvalidRequest to a DID that is not a DID', async () => {
      const result = await rawAsk(b, a, encodeFrame(dagCbor.encode({ did: 'alice.test' })))
      assert.deepEqual(result.frame, { error: 'InvalidRequest' })
    })

    it('answers InvalidRequest to bytes that are not DRISL', async () => {
      const result = await rawAsk(b, a, encodeFrame(Uint8Array.from([0x9f, 0xff])))
      assert.deepEqual(result.frame, { error: 'InvalidRequest' })
    })

    it('resets a request frame above the cap without answering', async () => {
      const result = await rawAsk(b, a, encodeFrame(dagCbor.encode({ did: DID, pad: new Uint8Array(8000) })))
      assert.equal(result.frame, undefined)
      assert.ok(result.ended !== undefined)
    })

    it('cuts off an asker that never sends its request', async () => {
      const stream = await b.dialProtocol(a.peerId, HEAD_PROTOCOL)
      const closed = new Promise<void>(resolve => { stream.addEventListener('close', () => { resolve() }, { once: true }) })
      const started = Date.now()
      await closed
      assert.ok(Date.now() - started < 3000, 'responder should reset the idle stream after its time limit')
      assert.equal(served.inbound, 0)
    })

    it('resets streams beyond the concurrency limit', async () => {
      // two idle streams take both slots (maxConcurrentInbound: 2); the third is reset at once
      const idle = await Promise.all([b.dialProtocol(a.peerId, HEAD_PROTOCOL), b.dialProtocol(a.peerId, HEAD_PROTOCOL)])
      await until('both idle streams to be served', () => served.inbound === 2)
      const result = await rawAsk(b, a, encodeFrame(dagCbor.encode({ did: DID })))
      assert.equal(result.frame, undefined)
      assert.equal(served.inbound, 2, 'the third stream was reset, not served')
      for (const stream of idle) stream.abort(new Error('done'))
      await until('the slots to be free', () => served.inbound === 0)
      const again = await rawAsk(b, a, encodeFrame(dagCbor.encode({ did: DID })))
      assert.ok(again.frame !== undefined, 'answers again once slots are free')
    })
  })

  describe('framing', () => {
    it('round-trips a frame split across chunks', async () => {
      const payload = new Uint8Array(300).fill(7)
      const frame = encodeFrame(payload)
      async function * chunks (): AsyncGenerator<Uint8Array> {
        for (let i = 0; i < frame.length; i += 7) yield frame.subarray(i, i + 7)
      }
      assert.deepEqual(await readFrame(chunks(), 1000), payload)
    })

    it('rejects an empty frame', async () => {
      async function * chunks (): AsyncGenerator<Uint8Array> { yield Uint8Array.from([0]) }
      await assert.rejects(readFrame(chunks(), 1000), (err: Error) => err.name === 'PeerProtocolError' && /empty frame/.test(err.message))
    })

    it('rejects a length varint longer than four bytes', async () => {
      async function * chunks (): AsyncGenerator<Uint8Array> { yield Uint8Array.from([0x80, 0x80, 0x80, 0x80, 0x01]) }
      await assert.rejects(readFrame(chunks(), 1000), (err: Error) => err.name === 'PeerProtocolError' && /too long/.test(err.message))
    })

    it('rejects a stream that ends before a frame', async () => {
      async function * chunks (): AsyncGenerator<Uint8Array> {}
      await assert.rejects(readFrame(chunks(), 1000), (err: Error) => err.name === 'PeerProtocolError' && /before a frame/.test(err.message))
    })
  })

  describe('peer head resolver', () => {
    const responders: Array<{ node: Libp2p, exchange: HeadExchange }> = []
    let asker: Libp2p
    let askExchange: HeadExchange
    let identity: IdentityResolver & { refreshes: number }
    let older: LocalHead
    let newer: LocalHead
    let forged: LocalHead

    /** Starts a node serving `head` for DID (or nothing). */
    async function responder (head: LocalHead | undefined): Promise<string> {
      const node = await bareNode()
      const exchange = new HeadExchange({ libp2p: node, heads: { getLocalHead: async (did) => did === DID ? head : undefined } })
      await exchange.start()
      responders.push({ node, exchange })
      return node.getMultiaddrs()[0]?.toString() as string
    }

    function resolver (peers: string[], store?: { getState: (did: string) => Promise<{ rev: string } | undefined> }): PeerHeadResolver {
      const mirrors = new MirrorFinder({ libp2p: asker }, { peers, timeoutMs: 1000 })
      return new PeerHeadResolver({ headExchange: askExchange, identity, mirrors, store }, { timeoutMs: 5000 })
    }

    before(async () => {
      older = await signedCommit(keypair, { rev: '3l3qo2vutsw2b' })
      newer = await signedCommit(keypair, { rev: '3l3qo2vutsw3z' })
      // valid commit for the DID, signed by a key that is not the DID's
      forged = await signedCommit(await Secp256k1Keypair.create(), { rev: '3l3qo2vutsx2z' })
      const signingKey = parseDidKey(keypair.did())
      const record: Identity = { did: DID, handleVerified: false, signingKey, didKey: keypair.did(), pds: 'http://localhost:1', document: { id: DID } as Identity['document'] }
      identity = {
        refreshes: 0,
        resolve: async () => record,
        refresh: async () => { identity.refreshes++; return record }
      }
      asker = await bareNode()
      askExchange = new HeadExchange({ libp2p: asker }, { timeoutMs: 1000 })
    })

    after(async () => {
      await Promise.all(responders.map(async ({ node, exchange }) => { await exchange.stop(); await node.stop() }))
      await asker.stop()
    })

    it('returns the highest verified rev among the peers', async () => {
      const peers = [await responder(older), await responder(newer)]
      const head = await resolver(peers).resolveHead(DID)
      assert.equal(head.rev, '3l3qo2vutsw3z')
      assert.equal(head.cid.toString(), newer.cid.toString())
      assert.equal(head.source, `peer:${peers[1]?.split('/p2p/')[1]}`)
    })

    it('ignores a higher rev signed by another key', async () => {
      identity.refreshes = 0
      const peers = [await responder(forged), await responder(older)]
      const head = await resolver(peers).resolveHead(DID)
      assert.equal(head.rev, '3l3qo2vutsw2b')
      assert.equal(identity.refreshes, 1, 'the key is looked up again once before the answer is refused')
    })

    it('once an answer reveals a rotation, a higher head signed by the rotated-out key is dropped', async () => {
      const rotated = await Secp256k1Keypair.create()
      const stale = await identity.resolve(DID)
      const fresh: Identity = { ...stale, signingKey: parseDidKey(rotated.did()), didKey: rotated.did() }
      const rotating: IdentityResolver = { resolve: async () => stale, refresh: async () => fresh }
      const replayed = await signedCommit(keypair, { rev: '3l3qo2vutsz2z' })
      const genuine = await signedCommit(rotated, { rev: '3l3qo2vutsw4z' })
      const peers = [await responder(replayed), await responder(genuine)]
      const mirrors = new MirrorFinder({ libp2p: asker }, { peers, timeoutMs: 1000 })
      const peerHeads = new PeerHeadResolver({ headExchange: askExchange, identity: rotating, mirrors }, { timeoutMs: 5000 })
      const head = await peerHeads.resolveHead(DID, { identity: stale })
      assert.equal(head.rev, '3l3qo2vutsw4z')
      assert.equal(head.identity, fresh)
      // and with the rotation known from the start, the replay alone is refused
      await assert.rejects(peerHeads.resolveFrom(DID, [peerIdFromString(peers[0]?.split('/p2p/')[1] as string)], { identity: fresh }), { name: 'HeadUnavailableError' })
    })

    it('fails with every reason when the only answer is mis-signed', async () => {
      const peers = [await responder(forged)]
      await assert.rejects(resolver(peers).resolveHead(DID), (err: Error & { errors?: Array<{ error: Error }> }) => {
        assert.equal(err.name, 'HeadUnavailableError')
        assert.deepEqual(err.errors?.map(e => e.error.name), ['CommitSignatureError'])
        return true
      })
    })

    it('refuses a head older than the stored one', async () => {
      const peers = [await responder(older)]
      const store = { getState: async () => ({ rev: '3l3qo2vutsw3z' }) }
      await assert.rejects(resolver(peers, store).resolveHead(DID), (err: Error & { errors?: Array<{ error: Error }> }) => {
        assert.equal(err.name, 'HeadUnavailableError')
        assert.deepEqual(err.errors?.map(e => e.error.name), ['HeadStaleError'])
        return true
      })
    })

    it('ignores an unsigned commit and a short sig, keeping the signed answer', async () => {
      const peers = [await responder(commitWithSig(undefined, '3l3qo2vutsy2z')), await responder(commitWithSig(new Uint8Array(63), '3l3qo2vutsy3z')), await responder(older)]
      const head = await resolver(peers).resolveHead(DID)
      assert.equal(head.rev, '3l3qo2vutsw2b')
      assert.equal(head.cid.toString(), older.cid.toString())
    })

    it('fails with every reason when the only answers are unsigned or short-signed', async () => {
      const peers = [await responder(commitWithSig(undefined)), await responder(commitWithSig(new Uint8Array(10)))]
      await assert.rejects(resolver(peers).resolveHead(DID), (err: Error & { errors?: Array<{ error: Error }> }) => {
        assert.equal(err.name, 'HeadUnavailableError')
        assert.deepEqual(err.errors?.map(e => e.error.name), ['CommitInvalidError', 'CommitInvalidError'])
        return true
      })
    })

    it('lists a peer that holds nothing as NotFound', async () => {
      const peers = [await responder(undefined)]
      await assert.rejects(resolver(peers).resolveHead(DID), (err: Error & { errors?: Array<{ error: Error }> }) => {
        assert.deepEqual(err.errors?.map(e => e.error.name), ['PeerHeadNotFoundError'])
        return true
      })
    })

    it('fails when no mirror is found', async () => {
      await assert.rejects(resolver([]).resolveHead(DID), (err: Error & { errors?: Array<{ source: string }> }) => {
        assert.equal(err.name, 'HeadUnavailableError')
        assert.deepEqual(err.errors?.map(e => e.source), ['peers'])
        return true
      })
    })
  })
})
