/**
 * Blob mirroring throughput against a plain `getBlob` download of the same blobs,
 * in the same run, from a real local PDS (support/network.ts).
 *
 *   node bench/blobs.ts [--large N] [--large-mb N] [--small N] [--small-kb N] [--runs N]
 *
 * An account uploads `--large` blobs of `--large-mb` MiB (video-sized, stored as
 * files) and `--small` blobs of `--small-kb` KiB (image-sized; under the 64 KiB
 * threshold they go into the block store) and references them all in posts.
 *
 * (a) baseline, what `curl` does: each blob fetched with undici's fetch and piped
 *     to a file, nothing else, as many at once as the mirror downloads (4).
 * (b) the mirror's blob pass (BlobMirror.fetchWanted) on a fresh store whose repo
 *     is synced with blobs off first: getBlob streamed through the hash check into
 *     a temp file (or memory, for the small ones), renamed into place (or put into
 *     the block store), and the index updated.
 *
 * (a) and (b) alternate, `--runs` times each, and medians are compared: (b)/(a),
 * with a target of at most 1.5.
 */
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { parseArgs } from 'node:util'
import { AtpAgent } from '@atproto/api'
import { eachParallel } from '../src/blocks/parallel.ts'
import { BlobFetcher, PdsBlobSource } from '../src/blocks/blob-fetch.ts'
import { PdsHeadResolver } from '../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../src/identity/resolver.ts'
import { BlobMirror } from '../src/mirror/blobs.ts'
import { MirrorStore } from '../src/mirror/store.ts'
import { RepoSyncer } from '../src/mirror/sync.ts'
import { startTestNetwork } from '../support/network.ts'

const { values } = parseArgs({
  options: {
    large: { type: 'string', default: '8' },
    'large-mb': { type: 'string', default: '4' },
    small: { type: 'string', default: '100' },
    'small-kb': { type: 'string', default: '40' },
    runs: { type: 'string', default: '3' }
  }
})
const LARGE = Number(values.large)
const LARGE_BYTES = Number(values['large-mb']) * 1024 * 1024
const SMALL = Number(values.small)
const SMALL_BYTES = Number(values['small-kb']) * 1024
const RUNS = Math.max(1, Number(values.runs))
const CONCURRENCY = 4

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const mib = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1)

const net = await startTestNetwork()
const root = await mkdtemp(join(tmpdir(), 'atmirror-bench-blobs-'))
try {
  const account = await net.createAccount('benchblobs')
  const agent = new AtpAgent({ service: net.pdsUrl })
  await agent.login({ identifier: account.handle, password: account.password })
  const sizes = [...Array.from({ length: LARGE }, () => LARGE_BYTES), ...Array.from({ length: SMALL }, () => SMALL_BYTES)]
  const refs: Array<{ $type: 'blob', ref: { $link: string }, mimeType: string, size: number }> = []
  for (const size of sizes) {
    const { data } = await agent.uploadBlob(randomBytes(size), { encoding: 'application/octet-stream' })
    refs.push({ $type: 'blob', ref: { $link: data.blob.ref.toString() }, mimeType: data.blob.mimeType, size: data.blob.size })
  }
  await net.writeRecords(account, refs.map((ref, i) => ({
    collection: 'app.bsky.feed.post',
    value: { text: `blob ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString(), embed: { $type: 'app.bsky.embed.images', images: [{ alt: '', image: ref }] } }
  })))
  const total = sizes.reduce((a, b) => a + b, 0)
  console.log(`${sizes.length} blobs (${LARGE} × ${mib(LARGE_BYTES)} MiB, ${SMALL} × ${(SMALL_BYTES / 1024).toFixed(0)} KiB), ${mib(total)} MiB; ${CONCURRENCY} downloads at once; medians of ${RUNS}`)

  const baseline = async (run: number): Promise<number> => {
    const dir = join(root, `curl-${run}`)
    await mkdir(dir)
    const started = performance.now()
    await eachParallel(refs, async (ref) => {
      const res = await fetch(`${net.pdsUrl}/xrpc/com.atproto.sync.getBlob?did=${account.did}&cid=${ref.ref.$link}`)
      if (!res.ok || res.body === null) throw new Error(`getBlob ${ref.ref.$link}: HTTP ${res.status}`)
      await pipeline(res.body as unknown as AsyncIterable<Uint8Array>, createWriteStream(join(dir, ref.ref.$link)))
    }, CONCURRENCY)
    const seconds = (performance.now() - started) / 1000
    await rm(dir, { recursive: true, force: true })
    return seconds
  }

  const mirror = async (run: number): Promise<number> => {
    const store = await MirrorStore.open(join(root, `mirror-${run}`))
    try {
      const identity = new AtprotoIdentityResolver({ plcUrl: net.plcUrl, allowHttpLocalhost: true })
      const blobs = new BlobMirror({ store, fetcher: new BlobFetcher({ sources: [new PdsBlobSource({ identity })] }) }, { concurrency: CONCURRENCY })
      const syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }) })
      // the records first, blobs off: (b) times the blob pass alone
      await store.blobs.setOff(account.did, true)
      await syncer.sync(account.did)
      await store.blobs.setOff(account.did, false)
      const started = performance.now()
      const result = await blobs.fetchWanted(account.did)
      const seconds = (performance.now() - started) / 1000
      if (result.bytes !== total || result.failed > 0) throw new Error(`blob pass stored ${result.bytes} of ${total} bytes, ${result.failed} failed`)
      return seconds
    } finally {
      await store.close()
      await rm(join(root, `mirror-${run}`), { recursive: true, force: true })
    }
  }

  const a: number[] = []
  const b: number[] = []
  for (let run = 0; run < RUNS; run++) {
    a.push(await baseline(run))
    b.push(await mirror(run))
  }
  const ma = median(a)
  const mb = median(b)
  console.log(`(a) baseline, getBlob piped to files (undici fetch): ${ma.toFixed(2)} s median (${a.map(s => s.toFixed(2)).join(', ')}); ${mib(total / ma)} MiB/s`)
  console.log(`(b) atmirror blob pass (hash-checked, temp file + rename, indexed): ${mb.toFixed(2)} s median (${b.map(s => s.toFixed(2)).join(', ')}); ${mib(total / mb)} MiB/s`)
  const ratio = mb / ma
  console.log(`\n(b)/(a) = ${ratio.toFixed(2)}  (target <= 1.5)  ${ratio <= 1.5 ? 'OK' : 'BELOW TARGET'}`)
} finally {
  await net.stop()
  await rm(root, { recursive: true, force: true })
}
