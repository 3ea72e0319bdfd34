/**
 * `atmirror pin add|rm|ls`: through the running daemon's control API, or, when no
 * daemon runs, directly on the data directory (taking its lock).
 */
import type { MirrorNode } from '../../src/node.ts'
import { ControlClient } from '../../src/server/control-client.ts'
import type { PinResult, PinnedRepo, UnpinResult } from '../../src/server/control-api.ts'
import { CommandUsageError, dataDir, defineCommand, globalOptions, type CommandContext } from './context.ts'
import { formatSync, identityConfig, identityOptions } from './node-options.ts'
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
  --plc URL               PLC directory, direct mode (ATMIRROR_PLC)
  --handle-resolver URL   handle resolution service, direct mode (ATMIRROR_HANDLE_RESOLVER)
  --json                  one JSON object per repo (ls: one per line)`

const options = { ...globalOptions, ...identityOptions } as const

/** What pin add/rm/ls need, from the daemon or from a node opened here. */
interface PinBackend {
  pinAndSync: (id: string, options: { signal?: AbortSignal }) => Promise<PinResult>
  unpin: (id: string, options: { signal?: AbortSignal }) => Promise<UnpinResult>
  listPins: (options: { signal?: AbortSignal }) => Promise<PinnedRepo[]>
  close: () => Promise<void>
}

export const command = defineCommand({
  usage: USAGE,
  options,
  async run ({ values, positionals }, ctx) {
    const [verb, ...ids] = positionals
    if (verb === undefined) throw new CommandUsageError(`missing subcommand (add, rm or ls)\n${USAGE}`)
    if (verb !== 'add' && verb !== 'rm' && verb !== 'ls') throw new CommandUsageError(`unknown subcommand ${JSON.stringify(verb)} (add, rm or ls)\n${USAGE}`)
    if (verb === 'ls' && ids.length > 0) throw new CommandUsageError(`pin ls takes no arguments\n${USAGE}`)
    if (verb !== 'ls' && ids.length === 0) throw new CommandUsageError(`pin ${verb} needs a DID or handle\n${USAGE}`)
    const json = values.json
    let backend: PinBackend | undefined
    try {
      backend = await openBackend(values, ctx)
      if (verb === 'ls') {
        const pins = await backend.listPins({ signal: ctx.signal })
        for (const repo of pins) ctx.stdout.write((json ? JSON.stringify(repo) : formatRepo(repo)) + '\n')
        if (!json && pins.length === 0) ctx.stdout.write('no pinned repos\n')
        return 0
      }
      let failed = 0
      for (const id of ids) {
        try {
          if (verb === 'add') {
            const result = await backend.pinAndSync(id, { signal: ctx.signal })
            ctx.stdout.write((json ? JSON.stringify({ ok: true, ...result }) : `pinned ${result.handle ?? ''}${result.handle === undefined ? '' : ' '}${formatSync(result.sync)}`) + '\n')
          } else {
            const result = await backend.unpin(id, { signal: ctx.signal })
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
      await backend?.close()
    }
  }
})

async function openBackend (values: { data?: string, plc?: string, 'handle-resolver'?: string }, ctx: CommandContext): Promise<PinBackend> {
  const dir = dataDir(values.data, ctx.env)
  const daemon = await ControlClient.forDataDir(dir)
  if (daemon !== undefined) {
    const { client } = daemon
    return {
      pinAndSync: async (id, options) => await client.pin(id, options),
      unpin: async (id, options) => await client.unpin(id, options),
      listPins: async (options) => await client.listPins(options),
      close: async () => {}
    }
  }
  const { createMirrorNode } = await import('../../src/node.ts')
  const node: MirrorNode = await createMirrorNode({
    dataDir: dir,
    ...identityConfig(values, ctx.env),
    network: false,
    api: false,
    checkOnStart: false,
    intervalMs: 0
  })
  return {
    pinAndSync: async (id, options) => await node.pinAndSync(id, options),
    unpin: async (id, options) => await node.unpin(id, options),
    listPins: async () => await node.listPins(),
    close: async () => { await node.stop() }
  }
}
