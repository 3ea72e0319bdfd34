/**
 * The daemon's options, apart from the verb: the one-shot verbs read the identity
 * settings (`plc`, `handle-resolver`) from the same config file, so they check it
 * against the same names.
 */
import { globalOptions } from './context.ts'
import { identityOptions, storeOptions } from './node-options.ts'

export const daemonOptions = {
  ...globalOptions,
  ...identityOptions,
  ...storeOptions,
  config: { type: 'string' },
  api: { type: 'string' },
  'api-host': { type: 'string' },
  http: { type: 'string' },
  'http-trust-proxy': { type: 'boolean' },
  'request-crawl': { type: 'string', multiple: true },
  'public-hostname': { type: 'string' },
  interval: { type: 'string' },
  concurrency: { type: 'string' },
  'max-repo-blocks': { type: 'string' },
  'max-repo-mb': { type: 'string' },
  'max-blob-size': { type: 'string' },
  'blob-recheck': { type: 'string' },
  // switches have no parser default: unset on the command line, they may come from elsewhere (config.ts)
  private: { type: 'boolean' },
  listen: { type: 'string', multiple: true },
  bootstrap: { type: 'string', multiple: true },
  announce: { type: 'string', multiple: true },
  'allow-dial': { type: 'string', multiple: true },
  peer: { type: 'string', multiple: true },
  provide: { type: 'string' },
  'no-upnp': { type: 'boolean' },
  'no-blobs': { type: 'boolean' },
  offline: { type: 'boolean' },
  relay: { type: 'string', multiple: true },
  'no-follow': { type: 'boolean' }
} as const

/** The daemon settings that also come from the environment and the config file. */
export const daemonSettings: ReadonlyArray<keyof typeof daemonOptions> = (Object.keys(daemonOptions) as Array<keyof typeof daemonOptions>)
  .filter(key => key !== 'help' && key !== 'json' && key !== 'config' && key !== 'data')
