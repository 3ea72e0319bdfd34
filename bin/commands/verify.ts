/**
 * `atmirror verify [DID-or-HANDLE] [--no-repair] [--json]`: checks stored repos end
 * to end, like fsck, and refetches what a damaged disk spoiled (MirrorNode.verify).
 * Opens the data directory itself (taking its lock), without the peer-to-peer
 * network: blocks are refetched from the PDS. Exit code 1 when a repo still fails.
 */
import { DataDirLockedError } from '../../src/errors.ts'
import { createMirrorNode } from '../../src/node.ts'
import type { StoredRepoReport } from '../../src/mirror/repair.ts'
import { ControlClient } from '../../src/server/control-client.ts'
import { UsageError, dataDir, defineCommand, globalOptions } from './context.ts'
import { blockstoreFlag, identityConfig, identityOptions, storeOptions } from './node-options.ts'

const USAGE = `usage: atmirror verify [DID-or-HANDLE] [options]

Checks the stored copy of a repo (or of every stored repo) end to end: every
block's hash, the commit and its signature against the DID's current key, the MST
structure and every record; then every stored blob the repo references, re-hashed.
A block or blob that is damaged on disk or missing is refetched from the repo's
PDS and the repair is reported. Exits 1 when a repo still fails its check (a
block or blob no source has, a bad signature).

Needs the data directory to itself: stop a daemon running on it first (the daemon
itself never serves a damaged block; it refetches one when it reads it).

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --blockstore KIND       level (packed; the default) or fs (a file per block) for a
                          new data directory; an existing one keeps the kind it has
  --plc URL               PLC directory, for signing keys (ATMIRROR_PLC)
  --handle-resolver URL   handle resolution service (ATMIRROR_HANDLE_RESOLVER)
  --no-repair             only check: damaged blocks and blobs are removed and reported,
                          nothing is fetched (a daemon's next sync fetches the blobs)
  --json                  print the result as one JSON object`

const options = { ...globalOptions, ...identityOptions, ...storeOptions, 'no-repair': { type: 'boolean', default: false } } as const

export const command = defineCommand({
  usage: USAGE,
  options,
  async run ({ values, positionals }, ctx) {
    if (positionals.length > 1) throw new UsageError(`unexpected arguments: ${positionals.slice(1).join(' ')}`)
    const dir = dataDir(values.data, ctx.env)
    const daemon = await ControlClient.forDataDir(dir)
    if (daemon !== undefined) throw new DataDirLockedError(dir, { pid: daemon.daemon.pid })
    const node = await createMirrorNode({ dataDir: dir, blockstore: blockstoreFlag(values.blockstore), ...identityConfig(values, ctx.env), network: false, api: false, checkOnStart: false, intervalMs: 0 })
    let reports: StoredRepoReport[]
    try {
      reports = await node.verify(positionals[0], { signal: ctx.signal, repair: !values['no-repair'] })
    } finally {
      await node.stop()
    }
    const ok = reports.every(report => report.ok)
    if (values.json) {
      ctx.stdout.write(JSON.stringify({ ok, repos: reports.map(toJson) }) + '\n')
    } else {
      for (const report of reports) ctx.stdout.write(formatReport(report) + '\n')
      const failed = reports.filter(report => !report.ok).length
      const repaired = reports.reduce((n, report) => n + report.repaired.length, 0)
      const blobs = reports.reduce((n, report) => n + (report.blobs?.repaired.length ?? 0), 0)
      ctx.stdout.write(`${reports.length} repo${reports.length === 1 ? '' : 's'} checked: ${reports.length - failed} ok, ${failed} failed; ${repaired} block${repaired === 1 ? '' : 's'} and ${blobs} blob${blobs === 1 ? '' : 's'} refetched\n`)
    }
    return ok ? 0 : 1
  }
})

function toJson (report: StoredRepoReport): Record<string, unknown> {
  const { error, ...rest } = report
  return { ...rest, ...(error === undefined ? {} : { error: { name: error.name, message: error.message } }) }
}

function formatReport (report: StoredRepoReport): string {
  const head = `${report.ok ? 'ok    ' : 'FAILED'}  ${report.did}  rev=${report.rev ?? '-'}`
  const lines = [report.records === undefined
    ? head + (report.ok ? '  (no blocks held: taken down or deleted)' : '')
    : `${head}  records=${report.records}  blocks=${report.blocks ?? '-'}  signature=${report.signature ?? '-'}`]
  for (const { cid, was } of report.repaired) lines.push(`  refetched ${was} block ${cid}`)
  const blobs = report.blobs
  if (blobs !== undefined) {
    lines.push(`  blobs: ${blobs.checked} intact (${blobs.bytes} bytes), ${blobs.repaired.length} refetched, ${blobs.failed.length} not refetched, ${blobs.gone.length} taken down`)
    for (const { cid, was } of blobs.repaired) lines.push(`  refetched ${was} blob ${cid}`)
    for (const { cid, was } of blobs.failed) lines.push(`  ${was} blob ${cid}, not refetched`)
    for (const cid of blobs.gone) lines.push(`  blob ${cid} no longer served by its PDS (taken down); removed`)
  }
  if (report.error !== undefined) lines.push(`  error: ${report.error.name}: ${report.error.message}`)
  return lines.join('\n')
}
