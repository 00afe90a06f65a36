// This process's incarnation: a fresh id at every start. A replica records the
// incarnation that opened it at its epoch; a later OPEN that finds another one
// knows the replica's process restarted since — after a power loss it may have
// lost writes it had acknowledged but not yet flushed.
import { randomUUID } from 'node:crypto';

export const PROCESS_INCARNATION = randomUUID();
