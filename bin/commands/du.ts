/**
 * `atmirror du [--json]`: what the data directory takes on disk, in all, for the
 * blocks and for the rest (state, index, keys), and per stored repo. Opens the data
 * directory (stop a daemon first, as for `verify`).
 */
import { DataDirLockedError } from '../../src/errors.ts'
import { createMirrorNode } from '../../src/node.ts'
import { storeDiskUsage } from '../../src/mirror/disk-usage.ts'
import { ControlClient } from '../../src/server/control-client.ts'
import { dataDir, defineCommand, expectPositionals, globalOptions } from './context.ts'
import { blockstoreFlag, formatBytes, storeOptions } from './node-options.ts'

const USAGE = `usage: atmirror du [--data DIR] [--json]

Shows the bytes the data directory takes on disk (allocated, as du counts them): in
all, for the blocks, for the blob files, and for everything else (repo states, the
GC index, keys); and per stored repo its blocks, their bytes, their share of the
blockstore's disk, and the blobs it references that are stored with their bytes (a
block or blob two repos share counts in both). Reads every stored block once.

Needs the data directory to itself: stop a daemon running on it first.

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --blockstore KIND       level or fs: must be the directory's kind, when given
  --json                  one JSON object`

export const command = defineCommand({
  usage: USAGE,
  options: { ...globalOptions, ...storeOptions },
  async run ({ values, positionals }, ctx) {
    expectPositionals(positionals, [])
    const dir = dataDir(values.data, ctx.env)
    const daemon = await ControlClient.forDataDir(dir)
    if (daemon !== undefined) throw new DataDirLockedError(dir, { pid: daemon.daemon.pid })
    const node = await createMirrorNode({ dataDir: dir, blockstore: blockstoreFlag(values.blockstore), network: false, api: false, checkOnStart: false, intervalMs: 0 })
    let usage
    try {
      usage = await storeDiskUsage(node.store, { signal: ctx.signal })
    } finally {
      await node.stop()
    }
    if (values.json) {
      ctx.stdout.write(JSON.stringify({ ok: true, dataDir: dir, ...usage }) + '\n')
      return 0
    }
    const lines = [
      `data:      ${dir} (${usage.kind} blockstore)`,
      `on disk:   ${formatBytes(usage.total)} in all`,
      `blocks:    ${formatBytes(usage.blocks)} on disk for ${formatBytes(usage.blockBytes)} of blocks`,
      `blobs:     ${formatBytes(usage.blobFiles)} on disk in files (blobs over 64 KiB; smaller ones are blocks)`,
      `other:     ${formatBytes(usage.other)} (repo states, GC index, keys)`,
      `repos:     ${usage.repos.length}`
    ]
    for (const repo of usage.repos) lines.push(`  ${repo.did}  blocks=${repo.blocks}  bytes=${formatBytes(repo.bytes)}  disk=${formatBytes(repo.disk)}  blobs=${repo.blobs}  blob bytes=${formatBytes(repo.blobBytes)}`)
    ctx.stdout.write(lines.join('\n') + '\n')
    return 0
  }
})
