/**
 * Slow-drip hosts against a running node (issue 15): four pinned repos whose host
 * sends `getRepo` one byte at a time fill every sync slot, yet a healthy repo's new
 * head is seen and its takedown honoured, because the throughput floor frees the
 * slots and re-checks of failing repos wait behind the healthy one. `pin rm` of a
 * dripping repo aborts its download and returns without waiting for the host.
 * The hosts are the fake PDS on 127.0.0.1 with `getRepo` overridden; the floor's
 * timings are scaled down through the node's `pds` options.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import { drip, type Drip } from '../helpers/drip.ts'
import { EvolvingRepo, post, posts, type RepoVersion } from '../helpers/evolving-repo.ts'
import { startFakePds, type FakePds } from '../helpers/fake-pds.ts'
import { until } from '../helpers/until.ts'

describe('slow-drip hosts', () => {
  let pds: FakePds
  let root: string
  let healthy: EvolvingRepo
  let healthyV1: RepoVersion
  const dripping: RepoVersion[] = []
  const drips: Drip[] = []
  const dripDids = new Set<string>()

  before(async () => {
    pds = await startFakePds()
    root = await mkdtemp(join(tmpdir(), 'atmirror-slow-drip-'))
    healthy = await EvolvingRepo.create(61, posts(10, 'healthy'))
    healthyV1 = await healthy.version()
    pds.setRepo(healthyV1.did, healthy.keypair, healthyV1)
    for (let i = 0; i < 5; i++) {
      const repo = await EvolvingRepo.create(70 + i, posts(30, `drip ${i}`))
      const version = await repo.version()
      pds.setRepo(version.did, repo.keypair, version)
      dripping.push(version)
      dripDids.add(version.did)
    }
  })

  after(async () => {
    await pds.stop()
    await rm(root, { recursive: true, force: true })
  })

  /** getRepo drips for the dripping DIDs (one byte every 20 ms: minutes for their CARs) and is normal for the rest. */
  const dripGetRepo = (): void => {
    pds.handle('getRepo', (_req, res, url, fallback) => {
      const did = url.searchParams.get('did') ?? ''
      const version = dripping.find(v => v.did === did)
      if (version === undefined) return fallback()
      drip(res, version.car, drips, did, { intervalMs: 20 })
    })
  }

  const startNode = async (name: string, floor: boolean): Promise<MirrorNode> => {
    return await createMirrorNode({
      dataDir: join(root, name),
      plcUrl: pds.url,
      allowHttpLocalhost: true,
      network: false,
      api: false,
      intervalMs: 100,
      concurrency: 4,
      // the drip's 50 bytes/s is a quarter of this floor: a dripping download fails after 600 ms
      pds: floor ? { minBytesPerSecond: 200, rateGraceMs: 300, rateWindowMs: 300, idleTimeoutMs: 30_000 } : { minBytesPerSecond: 0, idleTimeoutMs: 30_000 }
    })
  }

  it("four dripping repos do not keep a healthy repo's new head and takedown from being seen", async () => {
    dripGetRepo()
    const node = await startNode('starved', true)
    try {
      await node.pin(healthyV1.did)
      for (const version of dripping.slice(0, 4)) await node.addPin(version.did)
      const dripsBefore = drips.length
      await node.start()
      // every slot is taken by a dripping download
      await until('four dripping downloads', () => new Set(drips.slice(dripsBefore).map(d => d.did)).size === 4)

      const v2 = await healthy.write([{ action: 'create', value: post('3zzzzzzzzzzz2', 'a new post') }])
      pds.setRepo(v2.did, healthy.keypair, v2)
      await until('the healthy repo at its new rev', async () => (await node.getState(v2.did)).rev === v2.rev)
      // the floor, not the host, ended downloads to free a slot: the server saw the client leave
      assert.ok(drips.slice(dripsBefore).some(d => d.abandoned && !d.finished && dripDids.has(d.did)))

      pds.handle('getLatestCommit', (_req, res, url, fallback) => {
        if (url.searchParams.get('did') !== v2.did) return fallback()
        res.writeHead(400, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ error: 'RepoTakendown', message: 'Repo has been takendown' }))
      })
      await until('the takedown honoured', async () => (await node.getState(v2.did)).status === 'takendown')
      assert.equal(drips.some(d => d.finished), false, 'no drip ever finished')
    } finally {
      await node.stop()
      pds.reset()
    }
  })

  it('pin rm of a dripping repo aborts its download and returns without waiting for the host', async () => {
    dripGetRepo()
    // no floor here: only the unpin can end the download
    const node = await startNode('unpin', false)
    const version = dripping[4] as RepoVersion
    try {
      await node.addPin(version.did)
      const syncing = node.sync(version.did).then(() => 'synced', (err: Error) => err.name)
      await until('the dripping download to start', () => drips.some(d => d.did === version.did && d.sent > 0))
      const download = drips.find(d => d.did === version.did) as Drip

      const result = await node.unpin(version.did)
      assert.deepEqual(result, { did: version.did, pinned: false })
      // returned while the host was still far from done
      assert.equal(download.finished, false)
      assert.ok(download.sent < version.car.length / 2, `sent ${download.sent} of ${version.car.length} bytes`)
      assert.equal(await syncing, 'AbortError')
      await until('the server to see the download abandoned', () => download.abandoned)
      assert.deepEqual((await node.listPins()).map(p => p.did), [])
      await assert.rejects(node.getState(version.did), { name: 'RepoNotMirroredError' })
    } finally {
      await node.stop()
      pds.reset()
    }
  })
})
