/**
 * Real nodes (createMirrorNode) for e2e tests, in private mode on loopback and
 * wired to each other by address, bare libp2p peers beside them, and nodes that
 * follow the PDS: what the e2e tests start again and again.
 */
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { MemoryDatastore } from 'datastore-core/memory'
import { createMirrorNode, type MirrorNode, type MirrorNodeInit } from '../../src/node.ts'
import { createNetwork, type MirrorNetwork } from '../../src/net/network.ts'
import { parseCid } from '../../src/repo/cid.ts'
import { walkMst } from '../../src/repo/mst/walk.ts'

export interface TestNodeOptions {
  /** Nodes dialled at start. */
  bootstrap?: MirrorNode[]
  /** Nodes dialled at start and asked first for a DID's mirrors (what `--peer` gives a node). */
  peers?: MirrorNode[]
  /** The rest of the node's init (api, http, follow, metrics…); `api` is off unless given. */
  init?: Partial<MirrorNodeInit>
}

/** A node's first listen address. */
export function addressOf (node: MirrorNode): string {
  return node.network?.getMultiaddrs()[0]?.toString() as string
}

/**
 * Creates and starts a node under `root/name` that resolves DIDs with `plcUrl`,
 * and adds it to `nodes` (for the test's `after` to stop) before it starts.
 */
export async function startTestNode (nodes: MirrorNode[], where: { root: string, plcUrl: string }, name: string, options: TestNodeOptions = {}): Promise<MirrorNode> {
  const peers = options.peers?.map(addressOf)
  const created = await createMirrorNode({
    dataDir: join(where.root, name),
    plcUrl: where.plcUrl,
    allowHttpLocalhost: true,
    network: {
      mode: 'private',
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: peers ?? (options.bootstrap ?? []).map(addressOf),
      mirrors: peers === undefined ? { timeoutMs: 5000 } : { peers, timeoutMs: 5000 },
      // blocks from a mirror must arrive, however loaded the machine: the limit only bounds a failure
      bitswap: { blockTimeoutMs: 60_000 },
      // a PDS that is down answers at once; the wait is for peers
      services: { peerHeads: { timeoutMs: 10_000 } }
    },
    api: false,
    checkOnStart: false,
    intervalMs: 0,
    ...options.init
  })
  nodes.push(created)
  await created.start()
  return created
}

/** The init of a node that follows its PDSes from the start (no network, no API unless `init` says so). */
export function followerInit (dataDir: string, plcUrl: string, init: Partial<MirrorNodeInit> = {}): MirrorNodeInit {
  return {
    dataDir,
    plcUrl,
    allowHttpLocalhost: true,
    network: false,
    api: false,
    intervalMs: 0,
    checkOnStart: true,
    follow: { backoffMinMs: 50, backoffMaxMs: 500 },
    ...init
  }
}

/** A started bare libp2p peer (no node around it) in private mode on loopback, dialling `bootstrap`. */
export async function startBarePeer (blockstore: MemoryBlockstore = new MemoryBlockstore(), bootstrap: string[] = []): Promise<MirrorNetwork> {
  const net = await createNetwork({ blockstore, datastore: new MemoryDatastore(), privateKey: await generateKeyPair('Ed25519') }, {
    mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap
  })
  await net.start()
  return net
}

/** Stops the bare peers one after another (their protocol, then libp2p), then every node, whatever fails. */
export async function stopPeers (bare: Array<{ net: MirrorNetwork, exchange: { stop: () => Promise<void> } }>, nodes: MirrorNode[]): Promise<void> {
  for (const peer of bare) {
    await peer.exchange.stop()
    await peer.net.stop()
  }
  await Promise.allSettled(nodes.map(async n => { await n.stop() }))
}

/** Every record of the repo a node stores, `rpath → cid`, walked from its stored state. */
export async function recordsOf (node: MirrorNode, did: string): Promise<Map<string, string>> {
  const state = await node.store.getState(did)
  assert.ok(state !== undefined, 'repo stored')
  const records = new Map<string, string>()
  for await (const { rpath, cid } of walkMst(node.store.blocks, parseCid(state.data))) records.set(rpath, cid.toString())
  return records
}
