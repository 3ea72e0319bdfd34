/**
 * What every command gets: output streams, the environment, an abort signal, and
 * one way to report failure. Commands never touch process.* themselves, so they
 * can be driven from tests with captured streams.
 */
import { homedir } from 'node:os'
import { join } from 'node:path'
import { parseArgs, type ParseArgsConfig } from 'node:util'

export interface CommandContext {
  stdout: NodeJS.WritableStream & { isTTY?: boolean }
  stderr: NodeJS.WritableStream & { isTTY?: boolean }
  env: NodeJS.ProcessEnv
  signal: AbortSignal
  /** Prints `error: <name>: <message>` (or JSON with --json) and returns the exit code (1; 2 for usage). */
  fail: (err: unknown, options?: { json?: boolean }) => number
}

export interface Command {
  /** Returns the process exit code. */
  run: (args: string[], context: CommandContext) => Promise<number>
}

/** Wrong arguments: exit code 2 and the command's usage. */
export class CommandUsageError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'CommandUsageError'
  }
}

export function createCommandContext (init: Partial<CommandContext> & { signal: AbortSignal }): CommandContext {
  const stdout = init.stdout ?? process.stdout
  const stderr = init.stderr ?? process.stderr
  return {
    stdout,
    stderr,
    env: init.env ?? process.env,
    signal: init.signal,
    fail (err, options = {}) {
      const e = err instanceof Error ? err : new Error(String(err))
      if (options.json === true) {
        stdout.write(JSON.stringify({ ok: false, error: { name: e.name, message: e.message } }) + '\n')
      } else {
        stderr.write(`error: ${e.name}: ${e.message}\n`)
        if (e.cause instanceof Error && !e.message.includes(e.cause.message)) stderr.write(`  cause: ${e.cause.name}: ${e.cause.message}\n`)
      }
      return e instanceof CommandUsageError ? 2 : 1
    }
  }
}

/** Options every command accepts. */
export const globalOptions = {
  data: { type: 'string' },
  plc: { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false }
} as const satisfies NonNullable<ParseArgsConfig['options']>

type Options = NonNullable<ParseArgsConfig['options']>

/** What {@link parse} returns for a set of options. */
export type Parsed<O extends Options> = ReturnType<typeof parse<O>>

/**
 * A command from its usage text, its options and a body: parses the arguments
 * (usage errors exit 2), answers --help, and turns a thrown error into
 * `ctx.fail` (JSON with --json).
 */
export function defineCommand<O extends Options & typeof globalOptions> (spec: {
  usage: string
  options: O
  run: (parsed: Parsed<O>, ctx: CommandContext) => Promise<number>
}): Command {
  return {
    async run (args, ctx) {
      const parsed = parse(args, spec.options)
      const values = parsed.values as { help?: boolean, json?: boolean }
      if (values.help === true) {
        ctx.stdout.write(spec.usage + '\n')
        return 0
      }
      try {
        return await spec.run(parsed, ctx)
      } catch (err) {
        return ctx.fail(err, { json: values.json === true })
      }
    }
  }
}

/**
 * Exactly one positional argument per entry of `names` (e.g. `['DID or handle']`,
 * or `[]` for none); anything else is a usage error naming what is wrong.
 */
export function expectPositionals (positionals: string[], names: string[], usage: string): string[] {
  if (positionals.length < names.length) throw new CommandUsageError(`missing ${names[positionals.length]}\n${usage}`)
  if (positionals.length > names.length) throw new CommandUsageError(`unexpected arguments: ${positionals.slice(names.length).join(' ')}\n${usage}`)
  return positionals
}

/** node:util parseArgs with our usage error. */
export function parse<O extends Options> (args: string[], options: O, init: { allowPositionals?: boolean } = {}) {
  try {
    return parseArgs({ args, options, allowPositionals: init.allowPositionals ?? true, strict: true })
  } catch (err) {
    throw new CommandUsageError((err as Error).message)
  }
}

/** The data directory: --data, then ATMIRROR_DATA, then ~/.atmirror. */
export function dataDir (flag: string | undefined, env: NodeJS.ProcessEnv): string {
  return flag ?? env.ATMIRROR_DATA ?? join(homedir(), '.atmirror')
}

/** The PLC directory: --plc, then ATMIRROR_PLC, then https://plc.directory. */
export function plcUrl (flag: string | undefined, env: NodeJS.ProcessEnv): string {
  return flag ?? env.ATMIRROR_PLC ?? 'https://plc.directory'
}
