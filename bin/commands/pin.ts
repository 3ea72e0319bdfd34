/**
 * `atmirror pin add|rm|ls`: through the running daemon's control API, or, when no
 * daemon runs, directly on the data directory (taking its lock); see backend.ts.
 */
import { pinResultJson } from '../../src/server/control-api.ts'
import { openBackend } from './backend.ts'
import { UsageError, defineCommand, globalOptions } from './context.ts'
import { blobOptions, formatSync, identityOptions, storeOptions } from './node-options.ts'
import { progressFor } from './progress.ts'
import { formatRepo } from './status.ts'

const USAGE = `usage:
  atmirror pin add DID-or-HANDLE...   pin, then mirror each repo once
  atmirror pin rm DID-or-HANDLE...    unpin and delete blocks no other pin holds
  atmirror pin ls                     list pinned repos with rev, state, last sync

With a daemon running on the data directory, this goes through its control API.
Otherwise it works on the data directory directly (and fails with
DataDirLockedError while another atmirror process, e.g. 'mirror', holds it).

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --blockstore KIND       level (packed; the default) or fs (a file per block) for a
                          new data directory; an existing one keeps the kind it has
  --plc URL               PLC directory, direct mode (ATMIRROR_PLC)
  --handle-resolver URL   handle resolution service, direct mode (ATMIRROR_HANDLE_RESOLVER)
  --no-blobs              add: do not mirror the repos' blobs (images, video); kept
                          with the pin
  --progress              add: progress on stderr even when it is not a terminal
  --json                  ls: one JSON array of repos; add/rm: one JSON object per
                          repo and line ({"ok":true,…} or {"ok":false,"error":…})`

const options = { ...globalOptions, ...identityOptions, ...storeOptions, 'no-blobs': blobOptions['no-blobs'], progress: { type: 'boolean', default: false } } as const

export const command = defineCommand({
  usage: USAGE,
  options,
  async run ({ values, positionals }, ctx) {
    const [verb, ...ids] = positionals
    if (verb === undefined) throw new UsageError('missing subcommand (add, rm or ls)')
    if (verb !== 'add' && verb !== 'rm' && verb !== 'ls') throw new UsageError(`unknown subcommand ${JSON.stringify(verb)} (add, rm or ls)`)
    if (verb === 'ls' && ids.length > 0) throw new UsageError('pin ls takes no arguments')
    if (verb !== 'ls' && ids.length === 0) throw new UsageError(`pin ${verb} needs a DID or handle`)
    const json = values.json
    const backend = await openBackend(values, ctx)
    try {
      if (verb === 'ls') {
        const pins = await backend.api.listPins({ signal: ctx.signal })
        if (json) ctx.stdout.write(JSON.stringify(pins) + '\n')
        else ctx.stdout.write(pins.length === 0 ? 'no pinned repos\n' : pins.map(repo => formatRepo(repo) + '\n').join(''))
        return 0
      }
      let failed = 0
      for (const id of ids) {
        try {
          if (verb === 'add') {
            const progress = progressFor(ctx, { progress: values.progress, json })
            try {
              const result = await backend.api.pin(id, { signal: ctx.signal, onProgress: progress?.onProgress, blobs: values['no-blobs'] === true ? false : undefined })
              progress?.done()
              ctx.stdout.write((json ? JSON.stringify({ ok: true, ...pinResultJson(result) }) : `pinned ${result.handle ?? ''}${result.handle === undefined ? '' : ' '}${formatSync(result.sync)}`) + '\n')
            } finally {
              progress?.done()
            }
          } else {
            const result = await backend.api.unpin(id, { signal: ctx.signal })
            ctx.stdout.write((json ? JSON.stringify({ ok: true, ...result }) : `unpinned ${result.did}`) + '\n')
          }
        } catch (err) {
          if ((err as Error).name === 'AbortError') throw err
          failed++
          ctx.fail(err, { json })
        }
      }
      return failed === 0 ? 0 : 1
    } finally {
      await backend.close()
    }
  }
})
