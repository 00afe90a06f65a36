// How events are printed, in the seed's format:
//   05/12/2019-20:51:04 [info] [DFS] node (6a41aeba) failover completed. … :1019
import type { ClusterEvent } from './types';

function pad2(n: number): string {
  return n.toString().padStart(2, '0');
}

/** MM/DD/YYYY-HH:MM:SS in the local time zone of the printing machine. */
export function formatEventTime(date: Date): string {
  return (
    `${pad2(date.getMonth() + 1)}/${pad2(date.getDate())}/${date.getFullYear()}-` +
    `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`
  );
}

export function formatEvent(event: ClusterEvent): string {
  const component = event.component ? ` [${event.component}]` : '';
  return `${formatEventTime(new Date(event.time))} [${event.level}]${component} ${event.message} :${event.code}`;
}
