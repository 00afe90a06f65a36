// Prometheus metrics of the agent, served on /metrics.
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export const metricsRegistry = new Registry();
collectDefaultMetrics({ register: metricsRegistry, prefix: 'ciod_' });

export const isControllerGauge = new Gauge({
  name: 'cio_controller_is_leader',
  help: '1 while this agent is the elected controller',
  registers: [metricsRegistry],
});
