import assert from 'node:assert/strict'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { MirrorStore } from '../../src/mirror/store.ts'
import { AMINO_DHT_PROTOCOL, DialAllowList, PUBLIC_BOOTSTRAP_PEERS, parseBootstrapAddress, parseListenAddress, parsePeerAddress } from '../../src/net/addresses.ts'
import { PUBLIC_ONLY_SERVICES, createNetwork, type MirrorNetwork, type NetworkInit } from '../../src/net/network.ts'
import { loadOrCreatePeerKey, peerKeyPath } from '../../src/net/peer-key.ts'
import { cidForBytes, RAW } from '../../src/repo/cid.ts'
import { until } from '../helpers/until.ts'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'

interface TestNode {
  dir: string
  store: MirrorStore
  net: MirrorNetwork
}

const dirs: string[] = []

async function startNode (init: NetworkInit = {}, dir?: string): Promise<TestNode> {
  if (dir === undefined) {
    dir = await mkdtemp(join(tmpdir(), 'atmirror-net-'))
    dirs.push(dir)
  }
  const store = await MirrorStore.open(dir)
  const net = await createNetwork({ blockstore: store.blockstore, datastore: store.datastore, privateKey: await loadOrCreatePeerKey(dir) }, { mode: 'private', ...init })
  await net.start()
  return { dir, store, net }
}

/** Builds a network on a fresh data directory without starting it. */
async function buildNode (init: NetworkInit): Promise<{ store: MirrorStore, net: MirrorNetwork }> {
  const dir = await mkdtemp(join(tmpdir(), 'atmirror-net-'))
  dirs.push(dir)
  const store = await MirrorStore.open(dir)
  const net = await createNetwork({ blockstore: store.blockstore, datastore: store.datastore, privateKey: await loadOrCreatePeerKey(dir) }, init)
  return { store, net }
}

/** Protocols of services the private mode must not run. */
const PUBLIC_ONLY_PROTOCOL = /autonat|circuit|relay|dcutr|mdns|id\/push|upnp/i

async function stopNode (node: TestNode): Promise<void> {
  await node.net.stop()
  await node.store.close()
}

after(async () => {
  await Promise.all(dirs.map(async dir => await rm(dir, { recursive: true, force: true })))
})

describe('private network', () => {
  let a: TestNode
  let b: TestNode

  before(async () => {
    a = await startNode()
    b = await startNode({ bootstrap: [a.net.getMultiaddrs()[0]?.toString() ?? ''] })
  })

  after(async () => {
    await stopNode(b)
    await stopNode(a)
  })

  it('listens on loopback only, with our peer id in every address', () => {
    const addrs = a.net.getMultiaddrs().map(String)
    assert.ok(addrs.length > 0)
    for (const addr of addrs) assert.match(addr, new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${a.net.peerId.toString()}$`))
  })

  it('connects to the bootstrap peer before start() returns', () => {
    assert.deepEqual(b.net.getPeers().map(String), [a.net.peerId.toString()])
  })

  it('puts the peer into both DHT routing tables (loopback addresses kept)', async () => {
    await until('routing tables', () => a.net.dhtPeerCount() === 1 && b.net.dhtPeerCount() === 1)
    assert.equal(a.net.libp2p.services.dht.getMode(), 'server')
    assert.equal(b.net.libp2p.services.dht.getMode(), 'server')
  })

  it('fetches a block held by the other node through Helia and Bitswap', async () => {
    const bytes = new TextEncoder().encode(`bitswap test block ${Date.now()}`)
    const cid = await cidForBytes(bytes, RAW)
    await a.store.blockstore.put(cid, bytes)
    const chunks: Uint8Array[] = []
    for await (const chunk of b.net.helia.blockstore.get(cid, { signal: AbortSignal.timeout(10_000) })) chunks.push(chunk)
    assert.deepEqual(Buffer.concat(chunks), Buffer.from(bytes))
    // Helia never writes to the mirror's store: the syncer stores what it fetched.
    assert.equal(await b.store.blockstore.has(cid), false)
  })

  it('finds a provider through the DHT', async () => {
    const cid = await cidForBytes(new TextEncoder().encode(`provided ${Date.now()}`), RAW)
    await a.net.libp2p.contentRouting.provide(cid, { signal: AbortSignal.timeout(10_000) })
    // ADD_PROVIDER has no answer: provide() returns once the record is sent, and B
    // stores it a moment later (on a loaded machine, after B's first lookup)
    let found: string[] = []
    await until('B to find A as the provider', async () => {
      found = []
      for await (const provider of b.net.libp2p.contentRouting.findProviders(cid, { signal: AbortSignal.timeout(5000) })) found.push(provider.id.toString())
      return found.length > 0
    })
    assert.deepEqual(found, [a.net.peerId.toString()])
  })

  it('answers overlapping pings, so a late heartbeat does not cost the connection', async () => {
    // libp2p's connection monitor drops a connection whose ping fails; with one
    // outbound ping stream allowed, a ping started while another is open failed
    const rtts = await Promise.all([1, 2, 3].map(async () => await a.net.libp2p.services.ping.ping(b.net.peerId, { signal: AbortSignal.timeout(5000) })))
    assert.equal(rtts.length, 3)
    for (const rtt of rtts) assert.ok(rtt >= 0)
    assert.equal(a.net.libp2p.getConnections(b.net.peerId).length > 0, true)
  })

  it('runs Bitswap 1.2.0 and the Amino DHT protocol once started, and none of the public-only services', () => {
    const protocols = a.net.libp2p.getProtocols()
    assert.ok(protocols.includes('/ipfs/bitswap/1.2.0'), `bitswap registered (${protocols.join(', ')})`)
    assert.ok(protocols.includes('/ipfs/kad/1.0.0'))
    assert.deepEqual(protocols.filter(p => PUBLIC_ONLY_PROTOCOL.test(p)), [])
    assert.deepEqual(Object.keys(a.net.libp2p.services).filter(name => PUBLIC_ONLY_SERVICES.includes(name)), [])
  })

  it('refuses to dial an address outside loopback and the given peers', async () => {
    // a peer we are not connected to (a connected one would reuse its connection)
    const stranger = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
    const outside = `/ip4/192.0.2.1/tcp/4001/p2p/${stranger.toString()}`
    const started = Date.now()
    await assert.rejects(b.net.dial(outside), { name: 'DialDeniedError' })
    assert.ok(Date.now() - started < 2000, 'refused without trying to connect')
    assert.equal(b.net.libp2p.getConnections(stranger).length, 0)
  })
})

describe('peer identity', () => {
  it('keeps its PeerID across restarts, in a key file only the owner can read', async () => {
    const first = await startNode()
    const peerId = first.net.peerId.toString()
    await stopNode(first)
    const info = await stat(peerKeyPath(first.dir))
    assert.equal(info.mode & 0o777, 0o600)
    const second = await startNode({}, first.dir)
    try {
      assert.equal(second.net.peerId.toString(), peerId)
    } finally {
      await stopNode(second)
    }
  })

  it('a single node answers DHT queries with zero peers instead of waiting', async () => {
    const node = await startNode()
    try {
      const cid = await cidForBytes(new TextEncoder().encode('lonely'), RAW)
      const found: unknown[] = []
      for await (const provider of node.net.libp2p.contentRouting.findProviders(cid, { signal: AbortSignal.timeout(5000) })) found.push(provider)
      assert.deepEqual(found, [])
    } finally {
      await stopNode(node)
    }
  })
})

describe('network addresses', () => {
  it('rejects a listen address that is not ip + tcp', () => {
    assert.throws(() => parseListenAddress('/dns4/example.com/tcp/1'), { name: 'InvalidMultiaddrError' })
    assert.throws(() => parseListenAddress('not a multiaddr'), { name: 'InvalidMultiaddrError' })
  })

  it('rejects a bootstrap address without a peer id', () => {
    assert.throws(() => parseBootstrapAddress('/ip4/127.0.0.1/tcp/4001'), { name: 'InvalidMultiaddrError' })
  })

  it('createNetwork rejects a bad --listen before building anything', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'atmirror-net-'))
    dirs.push(dir)
    const store = await MirrorStore.open(dir)
    try {
      await assert.rejects(createNetwork({ blockstore: store.blockstore, datastore: store.datastore, privateKey: await loadOrCreatePeerKey(dir) }, { mode: 'private', listen: ['/ip4/127.0.0.1/udp/1'] }), { name: 'InvalidMultiaddrError' })
    } finally {
      await store.close()
    }
  })

  it('public mode builds (not started, so nothing is dialled): Amino DHT in client mode until a public address is confirmed', async () => {
    const { store, net } = await buildNode({ mode: 'public' })
    try {
      assert.equal(net.mode, 'public')
      assert.equal(net.libp2p.services.dht.getMode(), 'client')
      assert.equal(net.libp2p.status, 'stopped')
    } finally {
      await store.close()
    }
  })

  it('public mode: the Amino DHT protocol, the IPFS bootstrap list, and autoNAT, identify-push and UPnP to become reachable', async () => {
    const { store, net } = await buildNode({ mode: 'public' })
    try {
      assert.equal(net.libp2p.status, 'stopped')
      // the DHT instance libp2p built: registers this protocol when started
      assert.equal((net.libp2p.services.dht as unknown as { protocol: string }).protocol, '/ipfs/kad/1.0.0')
      assert.equal(AMINO_DHT_PROTOCOL, '/ipfs/kad/1.0.0')
      // the bootstrap discovery libp2p built, with the peers it will dial once started
      const discovery = net.libp2p.services.bootstrap as { list: Array<{ id: { toString: () => string }, multiaddrs: Array<{ toString: () => string }> }> }
      assert.deepEqual(discovery.list.flatMap(peer => peer.multiaddrs.map(String)), [...PUBLIC_BOOTSTRAP_PEERS])
      for (const peer of discovery.list) assert.ok(String(peer.multiaddrs[0]).endsWith(`/p2p/${peer.id.toString()}`))
      for (const name of PUBLIC_ONLY_SERVICES) assert.ok(net.libp2p.services[name] !== undefined, `public mode runs ${name}`)
    } finally {
      await store.close()
    }
  })

  it('public mode without UPnP still runs autoNAT', async () => {
    const { store, net } = await buildNode({ mode: 'public', upnp: false })
    try {
      assert.equal(net.libp2p.services.upnp, undefined)
      assert.ok(net.libp2p.services.autoNAT !== undefined)
    } finally {
      await store.close()
    }
  })

  it('private mode builds no bootstrap list, autoNAT, UPnP, identify-push, relay or mDNS', async () => {
    const { store, net } = await buildNode({ mode: 'private' })
    try {
      assert.deepEqual(Object.keys(net.libp2p.services).sort(), ['dht', 'identify', 'ping'])
    } finally {
      await store.close()
    }
  })

  it('refuses a /dnsaddr bootstrap or peer in private mode (it would resolve through public DNS), not in public mode', async () => {
    const dnsaddr = '/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN'
    assert.throws(() => parseBootstrapAddress(dnsaddr, 'private'), (err: Error) => err.name === 'InvalidMultiaddrError' && /dnsaddr/.test(err.message))
    assert.throws(() => parsePeerAddress(dnsaddr, 'private'), { name: 'InvalidMultiaddrError' })
    assert.equal(parseBootstrapAddress(dnsaddr, 'public').toString(), dnsaddr)
    const dir = await mkdtemp(join(tmpdir(), 'atmirror-net-'))
    dirs.push(dir)
    const store = await MirrorStore.open(dir)
    try {
      await assert.rejects(createNetwork({ blockstore: store.blockstore, datastore: store.datastore, privateKey: await loadOrCreatePeerKey(dir) }, { mode: 'private', bootstrap: [dnsaddr] }), { name: 'InvalidMultiaddrError' })
      await assert.rejects(createNetwork({ blockstore: store.blockstore, datastore: store.datastore, privateKey: await loadOrCreatePeerKey(dir) }, { mode: 'private', peers: [dnsaddr] }), { name: 'InvalidMultiaddrError' })
    } finally {
      await store.close()
    }
  })

  it('rejects a configured peer address that names no host', () => {
    assert.throws(() => parsePeerAddress('/p2p/12D3KooWGr7LJjT9a9Ja32vPCYubjLt1CH9WLhA5rgxeCUeDfczG'), { name: 'InvalidMultiaddrError' })
  })

  it('the private allow-list admits loopback, given hosts and CIDRs only', () => {
    const list = new DialAllowList({ addresses: [multiaddr('/ip4/10.1.2.3/tcp/4001/p2p/12D3KooWGr7LJjT9a9Ja32vPCYubjLt1CH9WLhA5rgxeCUeDfczG')], allow: ['192.168.7.0/24'] })
    assert.equal(list.allows(multiaddr('/ip4/127.0.0.1/tcp/1')), true)
    assert.equal(list.allows(multiaddr('/ip6/::1/tcp/1')), true)
    assert.equal(list.allows(multiaddr('/ip4/10.1.2.3/tcp/9')), true)
    assert.equal(list.allows(multiaddr('/ip4/10.1.2.4/tcp/9')), false)
    assert.equal(list.allows(multiaddr('/ip4/192.168.7.42/tcp/9')), true)
    assert.equal(list.allows(multiaddr('/ip4/8.8.8.8/tcp/9')), false)
    assert.equal(list.allows(multiaddr('/dns4/example.com/tcp/9')), false)
    assert.equal(list.allows(multiaddr('/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGr7LJjT9a9Ja32vPCYubjLt1CH9WLhA5rgxeCUeDfczG/p2p-circuit')), false)
  })
})

describe('configured peers in private mode', () => {
  it('lets a configured peer (--peer) outside loopback through the gater, and refuses the same address when it is not configured', async () => {
    // Asked of the gater, not by dialling: tests send nothing beyond loopback.
    const stranger = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
    const address = `/ip4/10.1.2.3/tcp/4001/p2p/${stranger.toString()}`
    const withPeer = await startNode({ peers: [address] })
    const without = await startNode()
    try {
      assert.equal(withPeer.net.dialAllowed(multiaddr(address)), true)
      assert.equal(withPeer.net.dialAllowed(multiaddr('/ip4/10.1.2.4/tcp/4001')), false)
      assert.equal(without.net.dialAllowed(multiaddr(address)), false)
      // and the gater really is what dial() consults: refused before any connection attempt
      await assert.rejects(without.net.dial(address), { name: 'DialDeniedError' })
      assert.equal(without.net.libp2p.getConnections(stranger).length, 0)
    } finally {
      await Promise.all([stopNode(withPeer), stopNode(without)])
    }
  })
})
