"""Gradients of a function of two variables: f(x, y) = sin(x) - y**3.

    python examples/gradients_basics.py
"""
import numpy as np

import functrax as ft
import functrax.numpy as fnp


def f(x, y):
    return fnp.sin(x) - y ** 3


def main():
    x, y = 0.5, 2.0
    df_dx, df_dy = ft.grad(f, argnums=(0, 1))(x, y)
    print(f"f({x}, {y}) = {float(f(x, y)):.6f}")
    print(f"df/dx = {float(df_dx):.6f}  (cos x = {np.cos(x):.6f})")
    print(f"df/dy = {float(df_dy):.6f}  (-3 y^2 = {-3 * y ** 2:.6f})")
    # Elementwise over arrays: vmap the scalar gradient.
    xs, ys = np.linspace(0, 1, 5), np.linspace(1, 2, 5)
    gx, gy = ft.vmap(ft.grad(f, argnums=(0, 1)))(xs, ys)
    print("on a grid, df/dx:", np.round(gx, 4), " df/dy:", np.round(gy, 4))
    print("d2f/dy2 at y=2:", float(ft.grad(ft.grad(f, argnums=1), argnums=1)(x, y)), "(-6y = -12)")


if __name__ == "__main__":
    main()
