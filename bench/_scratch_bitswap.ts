import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import * as dagCbor from '@ipld/dag-cbor'
import { tcp } from '@libp2p/tcp'
import { identify } from '@libp2p/identify'
import { createHeliaLight } from 'helia'
import { createLibp2p } from 'libp2p'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { MemoryDatastore } from 'datastore-core/memory'
import { BitswapBroker } from '../src/blocks/bitswap-broker.ts'
import { cidForBytes } from '../src/repo/cid.ts'

const opts = JSON.parse(process.argv[2] ?? '{}')
const N = Number(process.argv[3] ?? 5000)
const conc = Number(process.argv[4] ?? 256)
async function node (bs: MemoryBlockstore) {
  const libp2p = await createLibp2p({ addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()], services: { identify: identify() } })
  const light = createHeliaLight({ blockstore: bs, datastore: new MemoryDatastore(), codecs: [dagCbor], routers: [] })
  const helia = Object.assign(light, { libp2p }) as any
  withBitswap(helia, opts)
  await helia.start()
  return helia
}
const src = new MemoryBlockstore()
const cids = []
for (let i = 0; i < N; i++) { const bytes = dagCbor.encode({ text: `post ${i} `.repeat(10) }); const cid = cidForBytes(bytes); await src.put(cid, bytes); cids.push(cid) }
const a = await node(src)
const b = await node(new MemoryBlockstore())
await b.libp2p.dial(a.libp2p.getMultiaddrs()); await new Promise(r => setTimeout(r, Number(process.env.WAIT ?? 0)))
const broker = new BitswapBroker({ blocks: b.blockstore, libp2p: b.libp2p, mirrors: { async * findMirrors () { yield { id: a.libp2p.peerId, multiaddrs: a.libp2p.getMultiaddrs(), source: 'config' } } } }, { concurrency: conc })
const t = performance.now()
let n = 0
for await (const _ of broker.getMany(cids, { did: 'did:plc:x' })) n++
const s = (performance.now() - t) / 1000
console.log(JSON.stringify(opts), 'conc', conc, 'got', n, 'of', N, 'in', s.toFixed(2), 's', (n / s).toFixed(0), 'blocks/s', broker.stats())
await a.stop(); await b.stop()
