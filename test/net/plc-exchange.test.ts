/**
 * The PLC log exchange between two bare libp2p nodes on loopback: a responder
 * serving stored logs, and an asker that cuts off answers past its limits. What a
 * log must be to be used (verification) is tested in test/identity; here only the
 * wire: what comes back, and what is refused before any of it is read.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import * as dagCbor from '@ipld/dag-cbor'
import { PLC_PROTOCOL, PlcExchange } from '../../src/net/plc-exchange.ts'
import { encodeFrame, readFrame } from '../../src/net/exchange.ts'
import type { Libp2p, Stream } from '@libp2p/interface'

const DID = 'did:plc:ewvi7nxzyoun6zhxrhs64oiz'
const ENTRY = { did: DID, operation: { type: 'plc_tombstone', prev: 'bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5sqbmdrbq3vbsa4', sig: 'x' }, cid: 'bafy', nullified: false, createdAt: '2025-01-01T00:00:00.000Z' }

async function bareNode (): Promise<Libp2p> {
  return await createLibp2p({ addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] })
}

describe('PLC log exchange', () => {
  let server: Libp2p
  let client: Libp2p
  let responder: PlcExchange
  let asker: PlcExchange
  const logs = new Map<string, unknown[]>()

  before(async () => {
    server = await bareNode()
    client = await bareNode()
    responder = new PlcExchange({ libp2p: server, logs: { getPlcLog: async (did) => logs.has(did) ? { entries: logs.get(did) as any } : undefined } })
    await responder.start()
    asker = new PlcExchange({ libp2p: client }, { maxResponseBytes: 4096, timeoutMs: 2000 })
    await client.dial(server.getMultiaddrs()[0]!)
  })

  after(async () => {
    await responder?.stop()
    await client?.stop()
    await server?.stop()
  })

  it('answers a stored log entry for entry', async () => {
    logs.set(DID, [ENTRY])
    assert.deepEqual(await asker.requestLog(server.peerId, DID), [ENTRY])
    assert.deepEqual(responder.stats(), { requests: 1, served: 1 })
  })

  it('NotFound for a DID without a log', async () => {
    await assert.rejects(asker.requestLog(server.peerId, 'did:plc:44ybard66vv44zksje25o7dz'), { name: 'PeerHeadNotFoundError', message: /peer holds no PLC log/ })
  })

  it('an answer past the asker\'s cap is cut off', async () => {
    logs.set(DID, Array.from({ length: 40 }, () => ENTRY))
    await assert.rejects(asker.requestLog(server.peerId, DID), (err: Error & { peer?: string }) => {
      assert.equal(err.name, 'PeerProtocolError')
      assert.match(err.message, /exceeds the 4096-byte cap/)
      assert.equal(err.peer, server.peerId.toString())
      return true
    })
  })

  it('a request for a DID that is not did:plc is InvalidRequest', async () => {
    const stream: Stream = await client.dialProtocol(server.peerId, PLC_PROTOCOL)
    stream.send(encodeFrame(dagCbor.encode({ did: 'did:web:example.com' })))
    await stream.close()
    assert.deepEqual(dagCbor.decode(await readFrame(stream, 4096)), { error: 'InvalidRequest' })
  })

  it('an answer that is not a log is a protocol error', async () => {
    await server.handle('/atmirror/plc-bad/1.0.0', async (stream: Stream) => {
      await readFrame(stream, 4096)
      stream.send(encodeFrame(dagCbor.encode({ log: 'nope' })))
      await stream.close()
    })
    const bad = new PlcExchange({ libp2p: client }, { protocol: '/atmirror/plc-bad/1.0.0', timeoutMs: 2000 })
    await assert.rejects(bad.requestLog(server.peerId, DID), { name: 'PeerProtocolError', message: /log is not an array/ })
  })
})
