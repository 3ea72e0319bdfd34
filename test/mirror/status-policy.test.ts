/**
 * The account-status policy (src/mirror/status-policy.ts): its table, one row per
 * status, and each path that must ask it: the syncer (a host's status error keeps
 * or drops the blocks), export, the head exchange's local head source and the DHT
 * reprovider, each tried under every status against a fake PDS on 127.0.0.1.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { REPO_STATUSES, statusRules, type RepoStatus } from '../../src/mirror/status-policy.ts'
import { MirrorStore, type RepoState } from '../../src/mirror/store.ts'
import { RepoSyncer } from '../../src/mirror/sync.ts'
import { storeHeadSource } from '../../src/net/head-exchange.ts'
import { Reprovider } from '../../src/net/reprovider.ts'
import type { CID } from '../../src/repo/cid.ts'
import { startFakePds, type FakePds } from '../helpers/fake-pds.ts'
import { storedBlocks } from '../helpers/blocks.ts'
import { EvolvingRepo, posts, type RepoVersion } from '../helpers/evolving-repo.ts'
import { exportStoredRepo } from '../../src/mirror/export.ts'

/** The policy, row by row: blocks kept, served to peers, exportable. */
const TABLE: Record<RepoStatus, { store: boolean, serve: boolean, export: boolean }> = {
  active: { store: true, serve: true, export: true },
  deactivated: { store: true, serve: false, export: true },
  suspended: { store: true, serve: false, export: true },
  takendown: { store: false, serve: false, export: false },
  deleted: { store: false, serve: false, export: false }
}

/** The XRPC error a PDS answers for each status but `active`. */
const XRPC_ERROR: Record<Exclude<RepoStatus, 'active'>, string> = {
  deactivated: 'RepoDeactivated',
  suspended: 'RepoSuspended',
  takendown: 'RepoTakendown',
  deleted: 'RepoNotFound'
}

describe('status policy', () => {
  for (const status of REPO_STATUSES) {
    it(`${status}: blocks ${TABLE[status].store ? 'kept' : 'dropped'}, ${TABLE[status].serve ? 'served' : 'not served'}, ${TABLE[status].export ? 'exportable' : 'not exportable'}`, () => {
      assert.deepEqual(statusRules(status), TABLE[status])
    })
  }

  it('a status it does not know keeps the blocks and serves nothing', () => {
    assert.deepEqual(statusRules('desynchronized'), { store: true, serve: false, export: true })
    assert.deepEqual(statusRules('error'), { store: true, serve: false, export: true })
    assert.deepEqual(statusRules('__proto__'), { store: true, serve: false, export: true })
  })
})

describe('every path asks the status policy', () => {
  let pds: FakePds
  let root: string
  let store: MirrorStore
  let syncer: RepoSyncer
  let repo: EvolvingRepo
  let v1: RepoVersion

  before(async () => {
    pds = await startFakePds()
    root = await mkdtemp(join(tmpdir(), 'atmirror-status-policy-'))
    store = await MirrorStore.open(join(root, 'data'))
    const identity = new AtprotoIdentityResolver({ plcUrl: pds.url, allowHttpLocalhost: true })
    syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }) }, { pds: { idleTimeoutMs: 2000, timeoutMs: 5000 } })
    repo = await EvolvingRepo.create(41, posts(20))
    v1 = await repo.version()
    pds.setRepo(v1.did, repo.keypair, v1)
  })

  after(async () => {
    await store.close()
    await pds.stop()
    await rm(root, { recursive: true, force: true })
  })

  /** Brings the repo back to active with every block stored. */
  const restore = async (): Promise<void> => {
    pds.reset()
    await syncer.sync(v1.did)
    assert.equal((await store.getState(v1.did))?.status, 'active')
    assert.equal((await storedBlocks(store)).length, v1.blocks.length)
  }

  /** Puts the repo in `status` the way a sync does: the PDS says so. */
  const enter = async (status: RepoStatus): Promise<void> => {
    await restore()
    if (status === 'active') return
    pds.handle('getLatestCommit', (_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: XRPC_ERROR[status], message: `repo is ${status}` }))
    })
    await assert.rejects(syncer.sync(v1.did), (err: Error) => err.name.startsWith('Repo'))
    assert.equal((await store.getState(v1.did))?.status, status)
  }

  for (const status of REPO_STATUSES) {
    it(`${status}: the syncer, export, head exchange and reprovider follow the policy`, async () => {
      await enter(status)
      const rules = statusRules(status)
      const state = await store.getState(v1.did) as RepoState

      // the syncer (and GC): blocks kept or dropped, the pin kept either way
      const stored = await storedBlocks(store)
      assert.equal(stored.length, rules.store ? v1.blocks.length : 0)
      assert.equal(await store.pins.has(v1.did), true)

      // export
      const exporting = (async () => {
        let bytes = 0
        for await (const chunk of exportStoredRepo(store, v1.did)) bytes += chunk.byteLength
        return bytes
      })()
      if (rules.export) assert.ok(await exporting > 0)
      else await assert.rejects(exporting, { name: 'RepoNotMirroredError' })

      // head exchange: the local head handed to peers
      const head = await storeHeadSource({ pins: store.pins, getState: async (did) => await store.getState(did), getBlock: async (cid) => await store.blocks.get(cid) }).getLocalHead(v1.did)
      assert.equal(head !== undefined, rules.serve)

      // DHT announcements: provided while served, withdrawn otherwise
      const provided: string[] = []
      const cancelled: string[] = []
      const reprovider = new Reprovider({
        routing: {
          provide: async (cid: CID) => { provided.push(cid.toString()) },
          cancelReprovide: async (cid: CID) => { cancelled.push(cid.toString()) }
        },
        store: { pins: store.pins, getState: async (did) => await store.getState(did) }
      }, { passOnStart: false, intervalMs: 0 })
      reprovider.start()
      try {
        await reprovider.announce(v1.did)
        await reprovider.onIdle()
      } finally {
        await reprovider.stop()
      }
      assert.equal(provided.includes(state.commit), rules.serve, `commit provided: ${String(rules.serve)}`)
      if (!rules.serve) assert.deepEqual(provided, [])
    })
  }
})
