import { mkdtemp } from 'node:fs/promises'
import { MirrorStore } from './src/mirror/store.ts'
import { createNetwork } from './src/net/network.ts'
import { loadOrCreatePeerKey } from './src/net/peer-key.ts'
import { BitswapBroker } from './src/net/bitswap-broker.ts'
import { cidForBytes, RAW } from './src/repo/cid.ts'
async function node (bootstrap: string[] = []) {
  const dir = await mkdtemp('/tmp/dbg-')
  const store = await MirrorStore.open(dir)
  const net = await createNetwork({ blockstore: store.blockstore, datastore: store.datastore, privateKey: await loadOrCreatePeerKey(dir) }, { mode: 'private', bootstrap })
  await net.start()
  return { store, net }
}
const a = await node(); const b = await node([a.net.getMultiaddrs()[0].toString()])
for (const n of [100, 129, 300]) {
const blocks = await Promise.all(Array.from({ length: n }, async (_, i) => { const bytes = new TextEncoder().encode('x' + i + Date.now()); return { cid: await cidForBytes(bytes, RAW), bytes } }))
for (const bl of blocks) await a.store.blockstore.put(bl.cid, bl.bytes)
const t = Date.now()
let got = 0
for await (const x of new BitswapBroker({ helia: b.net.helia }).getMany(blocks.map(b => b.cid), {})) got++
console.log(n, 'got', got, Date.now() - t)
}
await b.net.stop(); await a.net.stop()
