/**
 * node:http, loaded through `require`. An ES `import … from 'node:http'` builds the
 * module's namespace, which reads every export, and one of them is a lazy getter
 * that loads undici (the fetch implementation): ~40 ms of CPU on every start of a
 * command that never fetches (`atmirror status`, `atmirror block get`). Through
 * `require` only what is used gets loaded.
 */
import { createRequire } from 'node:module'

export const nodeHttp: typeof import('node:http') = createRequire(import.meta.url)('node:http')
