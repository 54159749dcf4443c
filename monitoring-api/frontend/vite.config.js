import { defineConfig } from "vite";

// Built into the Python package, which serves it at /dashboard (no CDN at run time).
export default defineConfig({
  base: "/dashboard/",
  build: {
    outDir: "../src/monitoring_api/static/dashboard",
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 1000,
  },
  server: {
    proxy: {
      "/monitoring": "http://127.0.0.1:8003",
      "/ws/monitoring": { target: "http://127.0.0.1:8003", ws: true },
    },
  },
});
